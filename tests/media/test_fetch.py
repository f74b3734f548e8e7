"""worker.media.fetch against real local servers: limits, status codes, the address rules.

Where a test is about something else, allow_private=True lets it fetch from 127.0.0.1.
The address rules are tested for real through FakeNet: a fake name resolves to a public
address, and a connection to that address lands on 127.0.0.1, so the rule sees what it
would see on the internet.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from imagegen.worker.errors import DownloadFailed, ImageTooLarge, UnsafeURL
from imagegen.worker.media.fetch import Fetched, check_url, fetch

from .servers import BODY, PUBLIC, SECRET, FakeNet, fails, fetch_bytes, serve


@pytest.fixture
def port() -> Iterator[int]:
    with serve() as port:
        yield port


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> FakeNet:
    return FakeNet(monkeypatch)


def test_success(port: int) -> None:
    got, body = fetch_bytes(f"http://127.0.0.1:{port}/img{SECRET}")
    assert body == BODY
    assert got == Fetched(len(BODY), hashlib.sha256(BODY).hexdigest(), "image/png")


def test_no_cookies_or_authorization_and_the_host_header(port: int, net: FakeNet) -> None:
    net.name("images.example", [PUBLIC])
    net.nat.add(PUBLIC)
    client = httpx.Client(headers={"Authorization": "Bearer nope"}, cookies={"session": "x"})
    with client:
        for _ in range(2):  # the second time after the server set a cookie
            _, body = fetch_bytes(
                f"http://images.example:{port}/headers", allow_private=False, client=client
            )
            sent = {k.lower(): v for k, v in json.loads(body).items()}
            assert sent["host"] == f"images.example:{port}"
            assert "authorization" not in sent and "cookie" not in sent
    assert net.connects == [(PUBLIC, port), (PUBLIC, port)]  # the checked address


def test_drip_cut_by_the_total_timeout(port: int) -> None:
    for path in ("/drip", "/drip-headers"):
        started = time.monotonic()
        error = fails(DownloadFailed, f"http://127.0.0.1:{port}{path}{SECRET}", timeout_s=1.0)
        elapsed = time.monotonic() - started
        assert elapsed < 2.5, f"{path} took {elapsed:.2f} s"  # per-read timeouts: 10 s
        assert error.retryable is True
        assert str(error) == "could not download the image from '127.0.0.1': timed out after 1 s"


def test_content_length_over_the_limit_at_once(port: int) -> None:
    started = time.monotonic()
    error = fails(
        ImageTooLarge, f"http://127.0.0.1:{port}/declared-big{SECRET}", max_bytes=1_000_000
    )
    assert time.monotonic() - started < 1.0
    assert str(error) == (
        "the image from '127.0.0.1' is 10,000,000 bytes (its Content-Length); "
        "the limit is 1,000,000"
    )
    assert error.retryable is False


def test_chunked_body_over_the_limit(port: int) -> None:
    dest = io.BytesIO()
    with pytest.raises(ImageTooLarge, match=r"is over the limit of 1,000,000 bytes$"):
        fetch(
            f"http://127.0.0.1:{port}/chunked-big",
            dest,
            max_bytes=1_000_000,
            timeout_s=5,
            allow_private=True,
        )
    assert len(dest.getvalue()) <= 1_000_000  # never past the limit, even in dest


def test_compressed_body_refused(port: int) -> None:
    # Asked for identity; a gzip body would be inflated past any limit before we counted it.
    error = fails(DownloadFailed, f"http://127.0.0.1:{port}/gzip{SECRET}")
    assert str(error).endswith("a compressed body ('gzip') though asked for none")
    assert error.retryable is False


@pytest.mark.parametrize(
    ("status", "retryable", "text"),
    [
        (404, False, "HTTP 404 (not found)"),
        (410, False, "HTTP 410 (gone)"),
        (403, False, "HTTP 403"),
        (400, False, "HTTP 400"),
        (503, True, "HTTP 503"),
        (500, True, "HTTP 500"),
        (429, True, "HTTP 429 (too many requests)"),
        (408, True, "HTTP 408 (request timeout)"),
        (304, False, "HTTP 304"),
    ],
)
def test_status_codes(port: int, status: int, retryable: bool, text: str) -> None:
    error = fails(DownloadFailed, f"http://127.0.0.1:{port}/status/{status}{SECRET}")
    assert error.retryable is retryable
    assert str(error) == f"could not download the image from '127.0.0.1': {text}"


def test_connection_refused_is_retryable() -> None:
    with serve() as free:
        pass  # the port is closed now
    error = fails(DownloadFailed, f"http://127.0.0.1:{free}/img{SECRET}")
    assert error.retryable is True
    assert "ConnectError" in str(error)


def test_redirects_followed_up_to_three(port: int) -> None:
    _, body = fetch_bytes(f"http://127.0.0.1:{port}/redirect/3{SECRET}")
    assert body == BODY
    error = fails(DownloadFailed, f"http://127.0.0.1:{port}/redirect/4{SECRET}")
    assert str(error).endswith("more than 3 redirects") and error.retryable is False


def test_redirect_to_this_machine_refused(port: int, net: FakeNet) -> None:
    net.name("images.example", [PUBLIC])
    net.name("inside.example", ["10.1.2.3"])
    net.nat.add(PUBLIC)
    base = f"http://images.example:{port}"
    _, body = fetch_bytes(f"{base}/img", allow_private=False)  # the public name itself is fine
    assert body == BODY
    for target, reason in [
        (f"http://127.0.0.1:{port}/img{SECRET}", "'127.0.0.1' is this machine"),
        (f"http://localhost:{port}/img", "'localhost' is this machine"),
        (f"http://inside.example:{port}/img", "'inside.example' resolves to 10.1.2.3, a private"),
        ("http://169.254.169.254/latest/meta-data/", "'169.254.169.254' is a link-local"),
    ]:
        net.connects.clear()
        error = fails(UnsafeURL, f"{base}/to?url={target}", allow_private=False)
        assert reason in str(error)
        assert str(error).startswith("the image redirected from 'images.example'; the host ")
        assert net.connects == [(PUBLIC, port)]  # only the first hop was connected to
    # ...but allowed when private addresses are.
    _, body = fetch_bytes(f"{base}/to?url=http://127.0.0.1:{port}/img")
    assert body == BODY


def test_any_private_address_refuses_the_name(net: FakeNet) -> None:
    net.name("mixed.example", [PUBLIC, "192.168.1.7"])
    net.name("mapped.example", ["::ffff:127.0.0.1"])
    net.name("sixtofour.example", ["2002:a00:1::1"])
    for name, reason in [
        ("mixed.example", "resolves to 192.168.1.7, a private address"),
        ("mapped.example", "resolves to ::ffff:127.0.0.1, this machine"),
        ("sixtofour.example", "resolves to 2002:a00:1::1, which carries 10.0.0.1"),
    ]:
        with pytest.raises(UnsafeURL, match=reason):
            check_url(f"https://{name}/a.png{SECRET}", allow_private=False)
        error = fails(UnsafeURL, f"https://{name}/a.png{SECRET}", allow_private=False)
        assert reason in str(error)
    assert net.connects == []


def test_rebinding_uses_the_checked_address(port: int, net: FakeNet) -> None:
    # The first answer is public, any later one is this machine: only one lookup is made
    # and the connection goes to the address it returned.
    net.name("rebind.example", [PUBLIC], ["127.0.0.1"])
    net.nat.add(PUBLIC)
    _, body = fetch_bytes(f"http://rebind.example:{port}/img", allow_private=False)
    assert body == BODY
    assert net.lookups == ["rebind.example"]
    assert net.connects == [(PUBLIC, port)]


LITERALS = [
    "http://127.0.0.1/a.png",
    "http://127.1/a.png",
    "http://2130706433/a.png",
    "http://0x7f.0.0.1/a.png",
    "http://[::1]/a.png",
    "http://[::ffff:127.0.0.1]/a.png",
    "http://0.0.0.0/a.png",
    "http://0/a.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost/a.png",
    "http://LOCALHOST./a.png",
    "http://api.localhost/a.png",
    "http://10.0.0.1/a.png",
    "http://192.168.0.1/a.png",
    "http://172.16.5.4/a.png",
    "http://[fe80::1]/a.png",
    "http://[fd00::1]/a.png",
    "http://100.64.0.1/a.png",
    "http://224.0.0.1/a.png",
    "http://240.0.0.1/a.png",
    "http://[64:ff9b::7f00:1]/a.png",
]


@pytest.mark.parametrize("url", LITERALS)
def test_private_literals_refused(url: str, net: FakeNet) -> None:
    with pytest.raises(UnsafeURL) as caught:
        check_url(url + SECRET, allow_private=False)
    assert "SEKRIT" not in str(caught.value) and "the image URL's host" in str(caught.value)
    fails(UnsafeURL, url + SECRET, allow_private=False)
    assert net.connects == [] and net.lookups == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://images.example/a.png", "must be an http:// or https:// URL with a host"),
        ("file:///etc/passwd", "must be an http:// or https:// URL with a host"),
        ("gopher://images.example/", "must be an http:// or https:// URL with a host"),
        ("http:///a.png", "must be an http:// or https:// URL with a host"),
        ("a.png", "must be an http:// or https:// URL with a host"),
        ("http://user:pw@images.example/a.png", "must not carry a user name or password"),
        ("http://images.example:99999/a.png", "has an invalid port"),
        ("http://images.example/a b.png", "contains whitespace"),
        ("http://images.example/a\x1b.png", "control character U+001B"),
    ],
)
def test_bad_urls(url: str, message: str, net: FakeNet) -> None:
    net.name("images.example", [PUBLIC])
    for allow_private in (False, True):
        with pytest.raises(UnsafeURL, match=re.escape(message)):
            check_url(url + SECRET, allow_private=allow_private)
        error = fails(UnsafeURL, url + SECRET, allow_private=allow_private)
        assert message in str(error)


def test_check_url_public_name_and_allow_private(net: FakeNet) -> None:
    net.name("images.example", [PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
    check_url(f"https://images.example/a.png{SECRET}", allow_private=False)
    check_url("http://localhost:8080/a.png", allow_private=True)
    check_url("http://10.0.0.1/a.png", allow_private=True)
    with pytest.raises(UnsafeURL, match=r"^the image URL's host 'nowhere.invalid' does not "):
        check_url("https://nowhere.invalid/a.png", allow_private=False)


def test_many_threads_one_client(port: int) -> None:
    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        url = f"http://127.0.0.1:{port}/img"
        results = list(pool.map(lambda _: fetch_bytes(url, client=client)[1], range(16)))
    assert all(body == BODY for body in results)


@pytest.mark.parametrize("host", ["localhost", "api.localhost", "127.1", "2130706433", "0x7f.1"])
def test_written_form_refused_whatever_the_resolver_says(host: str, net: FakeNet) -> None:
    net.name(host, [PUBLIC])  # the rule on the name as written stands on its own
    with pytest.raises(UnsafeURL, match=r"is this machine$"):
        check_url(f"http://{host}/a.png", allow_private=False)
    assert net.lookups == []
