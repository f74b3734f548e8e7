"""fal's pricing API: the unit price of an endpoint, which its billable units are priced in.

``GET {base_url}/models/pricing?endpoint_id=...`` with ``Authorization: Key <FAL_KEY>``
answers ``{"prices": [{"endpoint_id", "unit_price", "unit", "currency"}], "has_more",
"next_cursor"}`` (fal's Platform API docs; GPT Image 2 is reported in "units"). Prices are
cached per endpoint for ``ttl_s``; a failure is never cached and never guessed around:
``PricingUnavailable`` says what went wrong (without the key).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import httpx

from imagegen.worker.errors import ConfigurationError, PricingUnavailable

FAL_PLATFORM_API = "https://api.fal.ai/v1"
#: the only currency a unit price is accepted in (budgets and bills are USD)
CURRENCY = "USD"


@dataclass(frozen=True)
class UnitPrice:
    """One endpoint's price: ``unit_price`` USD per ``unit`` (fal's billing unit)."""

    endpoint_id: str
    unit_price: Decimal
    unit: str
    currency: str


class UnitPrices(Protocol):
    """Where billed cost gets its unit price (PricingClient; FixedPricing for an emulator)."""

    def unit_price(self, endpoint_id: str) -> Decimal: ...


@dataclass(frozen=True)
class FixedPricing:
    """One unit price for every endpoint: for the emulator, whose units are its own."""

    price: Decimal = Decimal(1)

    def unit_price(self, endpoint_id: str) -> Decimal:
        return self.price


class PricingClient:
    """Unit prices from fal's pricing API, cached per endpoint for ``ttl_s`` seconds."""

    def __init__(
        self,
        *,
        key: str,
        base_url: str = FAL_PLATFORM_API,
        ttl_s: float = 3600.0,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not key.strip():
            raise ConfigurationError("fal's pricing API needs FAL_KEY, which is empty")
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Key {key}"},
            timeout=timeout_s,
            transport=transport,
        )
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, UnitPrice]] = {}

    def unit_price(self, endpoint_id: str) -> Decimal:
        """USD per billing unit of ``endpoint_id`` (e.g. ``openai/gpt-image-2``)."""
        return self.price(endpoint_id).unit_price

    def price(self, endpoint_id: str) -> UnitPrice:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(endpoint_id)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        found = self._fetch(endpoint_id)
        with self._lock:
            self._cache[endpoint_id] = (now, found)
        return found

    def _fetch(self, endpoint_id: str) -> UnitPrice:
        what = f"fal's pricing API for {endpoint_id!r}"
        try:
            response = self._client.get("/models/pricing", params={"endpoint_id": endpoint_id})
        except httpx.HTTPError as exc:
            raise PricingUnavailable(
                f"no answer from {what} ({type(exc).__name__})", retryable=True
            ) from exc
        status = response.status_code
        if status in (401, 403):
            raise PricingUnavailable(f"{what} refused the key (HTTP {status}): check FAL_KEY")
        if status >= 400:
            raise PricingUnavailable(f"{what} answered HTTP {status}", retryable=status >= 500)
        try:
            body = json.loads(response.content, parse_float=Decimal)
        except ValueError as exc:
            raise PricingUnavailable(f"{what} answered with a body that is not JSON") from exc
        return _parse(endpoint_id, body, what)

    def close(self) -> None:
        self._client.close()


def _parse(endpoint_id: str, body: Any, what: str) -> UnitPrice:
    """The entry for ``endpoint_id`` in a pricing answer, checked field by field."""
    prices = body.get("prices") if isinstance(body, dict) else None
    if not isinstance(prices, list):
        raise PricingUnavailable(f"{what} answered without a 'prices' list")
    entry = next(
        (p for p in prices if isinstance(p, dict) and p.get("endpoint_id") == endpoint_id), None
    )
    if entry is None:
        raise PricingUnavailable(f"{what} has no price for that endpoint")
    raw, unit, currency = entry.get("unit_price"), entry.get("unit"), entry.get("currency")
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
        raise PricingUnavailable(f"{what}: unit_price is {str(raw)[:40]!r}, not a number")
    try:
        amount = Decimal(raw)
    except InvalidOperation as exc:
        raise PricingUnavailable(f"{what}: unit_price {str(raw)[:40]!r} is not a number") from exc
    if not amount.is_finite() or amount < 0:
        raise PricingUnavailable(f"{what}: unit_price {raw!s:.40} is not a price")
    if not isinstance(unit, str) or not unit:
        raise PricingUnavailable(f"{what}: the entry names no unit")
    if currency != CURRENCY:
        raise PricingUnavailable(f"{what}: the price is in {str(currency)[:10]!r}, not USD")
    return UnitPrice(endpoint_id, amount, unit, currency)
