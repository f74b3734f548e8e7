"""HTTPS plumbing: a threading HTTP/1.1 server whose TLS handshake runs in the handler thread,
plus the socket-level actions (send, hang, drop) a scenario can ask for."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .reply import DROP, Reply

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 120.0
STREAM_CHUNK = 256 * 1024  # bodies larger than this are written in pieces of this size
_QUIET_ERRORS = (OSError, ValueError)  # disconnects, TLS failures, timeouts


class TLSServer(ThreadingHTTPServer):
    """Accepts TCP, wraps in TLS lazily and tracks live connections so stop() can cut them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        ssl_context: ssl.SSLContext,
        handler: type[BaseHTTPRequestHandler],
    ) -> None:
        self.ssl_context = ssl_context
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # Skip HTTPServer's getfqdn() lookup, which can be slow.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        """Shut down every live connection at the TCP level, waking blocked handlers."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _QUIET_ERRORS):
            logger.debug("connection from %s ended: %r", client_address, error)
        else:
            logger.exception("fal emulator: error while handling %s", client_address)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header, formatted once a second (email.utils is slow for every answer)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


class TLSHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: handshake, body reading and reply delivery."""

    protocol_version = "HTTP/1.1"
    server_version = "fal-emulator/1.0"
    timeout = IDLE_TIMEOUT_S
    server: TLSServer

    def setup(self) -> None:
        self.request.settimeout(HANDSHAKE_TIMEOUT_S)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def perform(self, reply: Reply) -> None:
        if reply.delay_s > 0 and self.server.stopping.wait(reply.delay_s):
            reply = DROP
        if reply.action == "drop":
            self._drop()
        elif reply.action == "hang":
            self._hang()
        else:
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        """Status line, headers and body in one write (one TLS record, one syscall)."""
        phrase = self.responses.get(reply.status, ("",))[0]
        head = [
            f"{self.protocol_version} {reply.status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {_http_date()}",
        ]
        head += [f"{name}: {value}" for name, value in reply.headers]
        head.append(f"Content-Type: {reply.content_type}")
        head.append(f"Content-Length: {len(reply.body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if self.command == "HEAD":
            self.wfile.write(data)
        elif len(reply.body) <= STREAM_CHUNK:
            self.wfile.write(data + reply.body)
        else:  # a big (cached) image: written in chunks, never copied whole
            self.wfile.write(data)
            body = memoryview(reply.body)
            for start in range(0, len(body), STREAM_CHUNK):
                self.wfile.write(body[start : start + STREAM_CHUNK])
        if logger.isEnabledFor(logging.DEBUG):
            self.log_request(reply.status)

    def _drop(self) -> None:
        """Close the TCP connection without any response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)

    def _hang(self) -> None:
        """Never answer: wait until the client goes away or the emulator stops."""
        self.close_connection = True
        while not self.server.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                return
