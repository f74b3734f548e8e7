"""Download an image from a URL someone else chose, without letting it reach our network.

Each hop's host is resolved once; every address must be public (unless ``allow_private``);
the connection goes to the address checked: the IP-literal URL is requested with the
original Host header and TLS SNI (``sni_hostname``), so the certificate is still verified
against the name, and a DNS answer that changes after the check (rebinding) is never used.
Redirects are followed here, each hop checked. ``timeout_s`` bounds the whole download: a
watchdog shuts the socket at the deadline, so a server dripping a byte a second is cut.
Messages name the host, never the path or query: presigned URLs carry credentials there.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import IO, Any

import httpx

from imagegen.worker.errors import DownloadFailed, ImageTooLarge, UnsafeURL
from imagegen.worker.media.addresses import checked_addresses, host_of, parse_url, shown

CHUNK_BYTES = 64 * 1024
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRYABLE = frozenset({408, 425, 429})
_STATUS_TEXT = {404: "not found", 410: "gone", 408: "request timeout", 429: "too many requests"}
_HEADERS = {
    "accept": "image/png, image/jpeg, image/webp, image/*;q=0.5",
    "accept-encoding": "identity",  # the bytes we count and hash are the bytes we store
    "user-agent": "imagegen",
    # Never back to the pool: pooled connections are keyed by IP, and another host's request
    # to the same IP must make its own TLS handshake (its own certificate check).
    "connection": "close",
}
_QUERY = re.compile(r"\?\S*")


@dataclass(frozen=True)
class Fetched:
    """What was written to ``dest``: its length, SHA-256 (hex) and the server's Content-Type."""

    bytes: int
    sha256: str
    content_type: str | None


def new_client(*, verify: ssl.SSLContext | bool = True) -> httpx.Client:
    """A client to share between threads for ``fetch``: env CAs and proxies, keeps no cookies."""
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(trust_env=True, verify=verify, follow_redirects=False, cookies=no_cookies)


def check_url(
    url: str, *, allow_private: bool, label: str = "the image URL", resolve_timeout_s: float = 5.0
) -> None:
    """Raise UnsafeURL unless ``url`` is one ``fetch`` would try (the enqueue-time check).

    http(s), a host, no user name; unless ``allow_private`` the host as written and every
    address it resolves to are public (a name that does not resolve is refused too).
    """
    parsed = parse_url(url, label)
    if allow_private:
        return
    what = f"{label}'s host"
    try:
        checked_addresses(parsed, allow_private=False, what=what, timeout_s=resolve_timeout_s)
    except TimeoutError:
        late = f"{what} {shown(host_of(parsed))} could not be resolved in time"
        raise UnsafeURL(late, retryable=True) from None
    except DownloadFailed as exc:
        raise UnsafeURL(exc.message, retryable=exc.retryable) from None


def fetch(
    url: str,
    dest: IO[bytes],
    *,
    max_bytes: int,
    timeout_s: float,
    allow_private: bool,
    client: httpx.Client | None = None,
    label: str = "the image",
) -> Fetched:
    """Stream ``url``'s body into ``dest`` (64 KiB at a time), in ``timeout_s`` at most.

    Raises UnsafeURL, ImageTooLarge, DownloadFailed (``retryable``: worth another try). On an
    error ``dest`` may hold part of a body: the caller discards it. Safe to call from many
    threads with one ``client`` (best made by ``new_client``); its cookies and auth are unused.
    """
    download = _Download(label, timeout_s, max_bytes, allow_private)
    first = parse_url(url, f"{label}'s URL")
    with download.watchdog:
        if client is not None:
            return download.run(client, first, dest)
        with new_client() as own:
            return download.run(own, first, dest)


class _Watchdog:
    """Shuts the current connection's socket at the deadline, wherever its reads are."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's ``trace`` extension: remember each new connection's socket."""
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock
            if self.fired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            _shut(self._socket)


def _shut(sock: socket.socket | None) -> None:
    # The plain socket's shutdown, also for an SSLSocket: it wakes a blocked read at once
    # (close() would not) and leaves the SSL object to the reading thread.
    if sock is not None:
        with suppress(OSError):  # closed already: the download ended as the deadline came
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Download:
    """One call of ``fetch``: its limits, deadline and watchdog."""

    def __init__(self, label: str, timeout_s: float, max_bytes: int, allow_private: bool) -> None:
        self.label = label
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.allow_private = allow_private
        self.deadline = time.monotonic() + timeout_s
        self.watchdog = _Watchdog(self.deadline)

    def run(self, client: httpx.Client, url: httpx.URL, dest: IO[bytes]) -> Fetched:
        what = f"{self.label}'s host"
        for hop in range(MAX_REDIRECTS + 1):
            host = shown(host_of(url))
            with self._failures(host):
                addresses = checked_addresses(
                    url, allow_private=self.allow_private, what=what, timeout_s=self._left()
                )
                with self._send(client, url, addresses) as response:
                    if response.status_code not in _REDIRECTS:
                        self._check_status(response.status_code, host)
                        return self._read_body(response, dest, host)
                    if hop == MAX_REDIRECTS:
                        raise self._failed(host, f"more than {MAX_REDIRECTS} redirects", False)
                    location = response.headers.get("location")
                    if not location:
                        raise self._failed(host, f"HTTP {response.status_code} without Location")
            url = parse_url(str(url.join(location)), f"{self.label}'s redirect from {host}")
            what = f"{self.label} redirected from {host}; the host"
        raise AssertionError("unreachable")  # pragma: no cover

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    @contextmanager
    def _failures(self, host: str) -> Iterator[None]:
        """httpx's and the resolver's errors as DownloadFailed, naming the host only."""
        try:
            yield
        except (TimeoutError, httpx.TimeoutException):
            raise self._failed(host, f"timed out after {self.timeout_s:g} s", True) from None
        except httpx.TransportError as exc:
            if self.watchdog.fired or time.monotonic() >= self.deadline:
                raise self._failed(host, f"timed out after {self.timeout_s:g} s", True) from None
            raise self._transport_failed(exc, host) from None

    @contextmanager
    def _send(
        self, client: httpx.Client, url: httpx.URL, addresses: list[str]
    ) -> Iterator[httpx.Response]:
        """The response from the first checked address that takes the connection."""
        assert addresses, "checked_addresses returns at least one"
        for index, address in enumerate(addresses):
            try:
                response = client.send(self._request(url, address), stream=True, auth=None)
            except httpx.ConnectError as exc:
                last = index == len(addresses) - 1
                if last or _certificate_problem(exc) or self.watchdog.fired:
                    raise
                continue
            try:
                yield response
            finally:
                response.close()
            return

    def _request(self, url: httpx.URL, address: str) -> httpx.Request:
        """GET ``url`` at ``address``; Host and SNI carry the name, so TLS checks the name."""
        extensions: dict[str, Any] = {
            "timeout": httpx.Timeout(self._left()).as_dict(),
            "trace": self.watchdog.trace,
        }
        if url.scheme == "https":
            extensions["sni_hostname"] = host_of(url)
        # Built by hand, not client.build_request: the client's headers and cookies stay out.
        headers = {"host": url.netloc.decode("ascii"), **_HEADERS}
        pinned = url.copy_with(host=address)
        return httpx.Request("GET", pinned, headers=headers, extensions=extensions)

    def _check_status(self, status: int, host: str) -> None:
        if 200 <= status < 300:
            return
        text = f"HTTP {status}" + (f" ({_STATUS_TEXT[status]})" if status in _STATUS_TEXT else "")
        raise self._failed(host, text, status in _RETRYABLE or status >= 500)

    def _read_body(self, response: httpx.Response, dest: IO[bytes], host: str) -> Fetched:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise self._failed(host, f"a compressed body ({shown(encoding)}) though asked for none")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageTooLarge(
                f"{self.label} from {host} is {int(declared):,} bytes (its Content-Length); "
                f"the limit is {self.max_bytes:,}"
            )
        digest, size = hashlib.sha256(), 0
        for chunk in response.iter_raw(CHUNK_BYTES):
            size += len(chunk)
            if size > self.max_bytes:
                raise ImageTooLarge(
                    f"{self.label} from {host} is over the limit of {self.max_bytes:,} bytes"
                )
            self._left()  # the watchdog's twin, between chunks
            digest.update(chunk)
            dest.write(chunk)
        return Fetched(size, digest.hexdigest(), response.headers.get("content-type"))

    def _failed(self, host: str, why: str, retryable: bool = False) -> DownloadFailed:
        message = _QUERY.sub("?…", f"could not download {self.label} from {host}: {why}")
        return DownloadFailed(message, retryable=retryable)

    def _transport_failed(self, exc: httpx.TransportError, host: str) -> DownloadFailed:
        certificate = _certificate_problem(exc)
        if certificate is not None:
            return self._failed(host, f"its TLS certificate is not valid ({certificate})")
        detail = str(exc) or "no detail"
        return self._failed(host, f"{type(exc).__name__} ({detail[:200]})", True)


def _certificate_problem(exc: BaseException) -> str | None:
    """The certificate check's complaint, when that is what failed (httpx wraps it twice)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or "verification failed"
        seen = seen.__cause__ or seen.__context__
    return None
