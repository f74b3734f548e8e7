"""Real local HTTP(S) servers and a fake resolver for tests/media/test_fetch.py."""

from __future__ import annotations

import gzip
import io
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from imagegen.worker.media.fetch import Fetched, fetch

BODY = bytes(range(256)) * 1000  # 256,000 bytes: several 64 KiB chunks
PUBLIC = "93.184.215.14"  # a public address; FakeNet routes it to 127.0.0.1
SECRET = "?X-Amz-Signature=SEKRIT&X-Amz-Credential=AKIA"  # must never reach a message


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        route = ROUTES.get(path)
        try:
            if route is not None:
                route(self)
            elif path.startswith("/status/"):
                self.answer(int(path.rsplit("/", 1)[1]), b"no")
            elif path.startswith("/redirect/"):  # /redirect/N: N more hops, then /img
                left = int(path.rsplit("/", 1)[1])
                self.send_response(302)
                target = "/img?sig=SEKRIT" if left <= 1 else f"/redirect/{left - 1}?sig=SEKRIT"
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/to":  # /to?url=...: redirect anywhere
                self.send_response(307)
                self.send_header("Location", self.path.split("url=", 1)[1])
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.answer(404, b"none")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    def answer(self, status: int, body: bytes, content_type: str = "image/png") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "session=abc; Path=/")
        self.end_headers()
        self.wfile.write(body)


def _img(h: Handler) -> None:
    h.answer(200, BODY)


def _headers(h: Handler) -> None:
    h.answer(200, json.dumps(dict(h.headers.items())).encode(), "application/json")


def _drip(h: Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "50")
    h.end_headers()
    for _ in range(50):  # one byte per 0.2 s: 10 s in all; no single read waits long
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.2)


def _drip_headers(h: Handler) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 60:
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(0.2)


def _declared_big(h: Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "10000000")
    h.end_headers()
    h.wfile.write(b"x" * 1000)
    h.wfile.flush()
    time.sleep(5)  # were the body awaited, the test would notice


def _chunked_big(h: Handler) -> None:
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    piece = b"z" * 65536
    for _ in range(40):  # 2.6 MB, no Content-Length
        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    h.wfile.write(b"0\r\n\r\n")


def _gzipped(h: Handler) -> None:
    body = gzip.compress(b"\0" * 1_000_000)  # a megabyte of zeros in about a kilobyte
    h.send_response(200)
    h.send_header("Content-Encoding", "gzip")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


ROUTES: dict[str, Callable[[Handler], None]] = {
    "/gzip": _gzipped,
    "/img": _img,
    "/headers": _headers,
    "/drip": _drip,
    "/drip-headers": _drip_headers,
    "/declared-big": _declared_big,
    "/chunked-big": _chunked_big,
}


@contextmanager
def serve(ssl_context: ssl.SSLContext | None = None) -> Iterator[int]:
    """A server on 127.0.0.1 (TLS with ``ssl_context``); yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class FakeNet:
    """Names that resolve as told, and public addresses that are really 127.0.0.1.

    ``names``: name -> the addresses getaddrinfo answers (a list of answers is served in
    turn, for rebinding). ``nat``: addresses a connection to which lands on 127.0.0.1 (same
    port). ``lookups`` and ``connects`` record what the code under test asked for.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: dict[str, list[list[str]]] = {}
        self.nat: set[str] = set()
        self.lookups: list[str] = []
        self.connects: list[tuple[str, int]] = []
        real_getaddrinfo = socket.getaddrinfo
        real_connect = socket.create_connection

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host in self.names:
                self.lookups.append(host)
                answers = self.names[host]
                addresses = answers.pop(0) if len(answers) > 1 else answers[0]
                return [_info(a, int(port or 0)) for a in addresses]
            return real_getaddrinfo(host, port, *args, **kwargs)

        def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
            self.connects.append(address)
            host, port = address[0], address[1]
            if host in self.nat:
                host = "127.0.0.1"
            return real_connect((host, port), *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", create_connection)

    def name(self, host: str, *answers: list[str]) -> None:
        self.names[host] = list(answers)


def _info(address: str, port: int) -> tuple[Any, ...]:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


def fetch_bytes(url: str, *, allow_private: bool = True, **kwargs: object) -> tuple[Fetched, bytes]:
    """``fetch`` into memory; allow_private unless told (the servers are on 127.0.0.1)."""
    dest = io.BytesIO()
    options: dict = {"max_bytes": 1_000_000, "timeout_s": 5.0} | kwargs
    got = fetch(url, dest, allow_private=allow_private, **options)
    return got, dest.getvalue()


def fails(kind: type[Exception], url: str, **kwargs: object) -> Exception:
    """The error ``fetch`` raises, checked to be one line without the query's secrets."""
    with pytest.raises(kind) as caught:
        fetch_bytes(url, **kwargs)
    assert "SEKRIT" not in str(caught.value) and "AKIA" not in str(caught.value)
    assert "\n" not in str(caught.value)
    return caught.value
