"""PricingClient against a local http.server standing in for fal's pricing API."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from imagegen.worker.cost.pricing import FixedPricing, PricingClient, UnitPrices
from imagegen.worker.errors import ConfigurationError, ImagegenError, PricingUnavailable

KEY = "pricing-key-do-not-log-1234"
MODEL = "openai/gpt-image-2"
OK_BODY = (
    '{"prices": [{"endpoint_id": "openai/gpt-image-2", "unit_price": 1.0, "unit": "units",'
    ' "currency": "USD"}, {"endpoint_id": "other/model", "unit_price": 0.3, "unit": "image",'
    ' "currency": "USD"}], "has_more": false, "next_cursor": null}'
)


class Stub:
    """What the stub answers, and what it was asked."""

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes = OK_BODY.encode()
        self.requests: list[dict[str, Any]] = []


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            state.requests.append(
                {"path": url.path, "query": parse_qs(url.query), "headers": dict(self.headers)}
            )
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(base: str, clock: Clock | None = None, ttl_s: float = 60) -> PricingClient:
    return PricingClient(key=KEY, base_url=base, ttl_s=ttl_s, clock=clock or Clock())


def test_unit_price_and_request_shape(stub: tuple[Stub, str]) -> None:
    state, base = stub
    pricing = client(base)
    price = pricing.price(MODEL)
    assert price.unit_price == Decimal("1.0") and isinstance(price.unit_price, Decimal)
    assert (price.unit, price.currency) == ("units", "USD")
    assert pricing.unit_price("other/model") == Decimal("0.3")  # exact, not 0.299999...
    (first, _) = state.requests
    assert first["path"] == "/v1/models/pricing"
    assert first["query"] == {"endpoint_id": [MODEL]}
    assert first["headers"]["Authorization"] == f"Key {KEY}"


def test_cached_per_endpoint_for_the_ttl(stub: tuple[Stub, str]) -> None:
    state, base = stub
    clock = Clock()
    pricing = client(base, clock, ttl_s=60)
    pricing.unit_price(MODEL)
    clock.now += 59
    pricing.unit_price(MODEL)
    assert len(state.requests) == 1
    pricing.unit_price("other/model")  # another endpoint: its own entry
    assert len(state.requests) == 2
    clock.now += 2  # MODEL's entry is now 61 s old
    pricing.unit_price(MODEL)
    assert len(state.requests) == 3


def test_a_failure_is_not_cached(stub: tuple[Stub, str]) -> None:
    state, base = stub
    pricing = client(base)
    state.status = 500
    with pytest.raises(PricingUnavailable):
        pricing.unit_price(MODEL)
    state.status = 200
    assert pricing.unit_price(MODEL) == Decimal("1.0")


@pytest.mark.parametrize(
    ("status", "body", "message", "retryable"),
    [
        (401, b'{"detail": "Invalid key"}', "refused the key (HTTP 401)", False),
        (403, b'{"detail": "Forbidden"}', "refused the key (HTTP 403)", False),
        (500, b'{"detail": "boom"}', "answered HTTP 500", True),
        (404, b'{"detail": "nope"}', "answered HTTP 404", False),
        (200, b"<html>hello</html>", "not JSON", False),
        (200, b'{"price": 1}', "without a 'prices' list", False),
        (200, b'["a"]', "without a 'prices' list", False),
        (200, b'{"prices": []}', "no price for that endpoint", False),
        (
            200,
            b'{"prices": [{"endpoint_id": "openai/gpt-image-2", "unit_price": "x",'
            b' "unit": "units", "currency": "USD"}]}',
            "is not a number",
            False,
        ),
        (
            200,
            b'{"prices": [{"endpoint_id": "openai/gpt-image-2", "unit_price": null,'
            b' "unit": "units", "currency": "USD"}]}',
            "not a number",
            False,
        ),
        (
            200,
            b'{"prices": [{"endpoint_id": "openai/gpt-image-2", "unit_price": -1,'
            b' "unit": "units", "currency": "USD"}]}',
            "is not a price",
            False,
        ),
        (
            200,
            b'{"prices": [{"endpoint_id": "openai/gpt-image-2", "unit_price": 1,'
            b' "currency": "USD"}]}',
            "names no unit",
            False,
        ),
        (
            200,
            b'{"prices": [{"endpoint_id": "openai/gpt-image-2", "unit_price": 1,'
            b' "unit": "units", "currency": "EUR"}]}',
            "not USD",
            False,
        ),
    ],
)
def test_clear_errors(
    stub: tuple[Stub, str],
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: bytes,
    message: str,
    retryable: bool,
) -> None:
    state, base = stub
    state.status, state.body = status, body
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PricingUnavailable) as raised:
        client(base).unit_price(MODEL)
    assert isinstance(raised.value, ImagegenError)
    assert message in str(raised.value)
    assert MODEL in str(raised.value)
    assert raised.value.retryable is retryable
    assert KEY not in str(raised.value)
    assert KEY not in caplog.text  # httpx logs each request at DEBUG: never the key


def test_no_answer_is_retryable_and_names_no_key() -> None:
    with pytest.raises(PricingUnavailable) as raised:
        PricingClient(key=KEY, base_url="http://127.0.0.1:9/v1", timeout_s=1).unit_price(MODEL)
    assert raised.value.retryable is True
    assert "no answer" in str(raised.value) and KEY not in str(raised.value)


def test_key_never_logged_on_success(
    stub: tuple[Stub, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, base = stub
    caplog.set_level(logging.DEBUG)
    client(base).unit_price(MODEL)
    assert caplog.records  # httpx did log the request
    assert KEY not in caplog.text


def test_an_empty_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="FAL_KEY"):
        PricingClient(key=" ")


def test_fixed_pricing_for_the_emulator() -> None:
    prices: UnitPrices = FixedPricing(Decimal("0.5"))
    assert prices.unit_price(MODEL) == Decimal("0.5")
    assert FixedPricing().unit_price("any/model") == Decimal(1)
