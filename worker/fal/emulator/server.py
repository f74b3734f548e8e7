"""FalEmulator: an HTTPS emulator of fal.ai's queue protocol, and `serve()` to run one."""

from __future__ import annotations

import contextlib
import shlex
import signal
import ssl
import tempfile
import threading
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

import trustme
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .handler import AppContext, FalHandler, bind_handler
from .protocol import Protocol
from .state import QueueState
from .transport import TLSServer
from .webhooks import WebhookSender, jwks_for

_WILDCARD_HOSTS = {"", "0.0.0.0"}  # noqa: S104 - only used to map a bind address to a URL host


def _server_context(host: str, cert_dir: Path) -> tuple[ssl.SSLContext, str]:
    """A fresh CA and a server certificate for 127.0.0.1/localhost; returns (context, CA path)."""
    ca = trustme.CA()
    identities = ["127.0.0.1", "localhost"]
    if host not in _WILDCARD_HOSTS and host not in identities:
        identities.append(host)
    cert = ca.issue_cert(*identities)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    ca_file = cert_dir / "fal-emulator-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, str(ca_file)


class FalEmulator:
    """Serves fal's queue REST protocol over HTTPS on a background daemon thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.5,
        concurrency_limit: int | None = None,
        cert_dir: str | Path | None = None,
        expected_key: str | None = None,
        reject_over_limit: bool = False,
        round_trip_s: float = 0.0,
        input_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.input_timeout_s = input_timeout_s
        self.round_trip_s = round_trip_s
        self.port = port
        self.ca_file = ""
        self._cert_dir = cert_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._expected_key = expected_key
        self._state = QueueState(latency_s, concurrency_limit, reject_over_limit)
        self._server: TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._signing_key = Ed25519PrivateKey.generate()
        self._webhooks: WebhookSender | None = None

    @property
    def host_port(self) -> str:
        url_host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        return f"{url_host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"https://{self.host_port}"

    def _resolve_cert_dir(self) -> Path:
        if self._cert_dir is not None:
            path = Path(self._cert_dir)
            path.mkdir(parents=True, exist_ok=True)
            return path
        self._tmp = tempfile.TemporaryDirectory(prefix="fal-emulator-")
        return Path(self._tmp.name)

    def start(self) -> FalEmulator:
        if self._server is not None:
            return self
        context, self.ca_file = _server_context(self.host, self._resolve_cert_dir())
        server = TLSServer((self.host, self.port), context, FalHandler)
        self.port = int(server.server_address[1])
        protocol = Protocol(self.host_port)
        jwks = jwks_for(self._signing_key)
        app = AppContext(
            self._state, protocol, self._expected_key, jwks, self.round_trip_s, self.input_timeout_s
        )
        server.RequestHandlerClass = bind_handler(app)
        self._webhooks = WebhookSender(self._state, protocol, self._signing_key)
        self._webhooks.start()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"fal-emulator-{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        if self._webhooks is not None:
            self._webhooks.stop()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FalEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment that points an unmodified fal-client at this emulator."""
        return {
            "FAL_QUEUE_RUN_HOST": self.host_port,
            "FAL_RUN_HOST": self.host_port,
            "SSL_CERT_FILE": self.ca_file,
            "IMAGEGEN_FAL_JWKS_URL": f"{self.base_url}/.well-known/jwks.json",
        }

    def stats(self) -> dict[str, Any]:
        return self._state.stats()

    def reset(self) -> None:
        self._state.reset()

    def configure(
        self,
        *,
        latency_s: float | None = None,
        concurrency_limit: int | EllipsisType | None = ...,
        reject_over_limit: bool | EllipsisType = ...,
    ) -> None:
        """Change latency, the concurrency limit (None = unlimited) and/or strict mode.

        Omitted arguments keep their value. With `reject_over_limit` and a limit, a submit
        while `limit` requests are queued or running gets 429 instead of being queued.
        """
        self._state.configure(latency_s, concurrency_limit, reject_over_limit)


def serve(
    *,
    host: str,
    port: int,
    latency_s: float,
    concurrency_limit: int | None,
    cert_dir: str | None,
    reject_over_limit: bool = False,
    round_trip_s: float = 0.0,
) -> None:
    """Run an emulator until Ctrl-C or SIGTERM, printing `export` lines for its environment."""
    emulator = FalEmulator(
        host=host,
        port=port,
        latency_s=latency_s,
        concurrency_limit=concurrency_limit,
        cert_dir=cert_dir,
        reject_over_limit=reject_over_limit,
        round_trip_s=round_trip_s,
    )
    done = threading.Event()
    previous = _install_sigterm(done)
    emulator.start()
    try:
        for name, value in emulator.env().items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        limit = "unlimited" if concurrency_limit is None else concurrency_limit
        if reject_over_limit and concurrency_limit is not None:
            limit = f"{limit}, 429 over it"
        print(
            f"# fal emulator on {emulator.base_url} (latency {latency_s}s, "
            f"concurrency {limit}, round trip {round_trip_s}s); Ctrl-C to stop",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while not done.wait(0.5):
                pass
    finally:
        emulator.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _install_sigterm(done: threading.Event) -> Any:
    """Make SIGTERM end serve(); returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda _signum, _frame: done.set())
