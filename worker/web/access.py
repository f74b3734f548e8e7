"""The API's access log and request metrics: one line per request, nothing from its body.

Each line has the method, the route template (``/jobs/{job_id}``) and the path as sent
(percent-encoded, without the query string), the status, the duration and a request id
(the client's ``X-Request-ID`` if it is a plain token, else a new one; echoed back and bound
to every log line written while the request runs). Headers are never logged: the API key
travels in ``Authorization``; prompts travel in the body.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen.worker import metrics
from imagegen.worker.logs import get_logger

log = get_logger("imagegen.access")

REQUEST_ID_HEADER = "x-request-id"
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: the route label of a request no route matched: one value, whatever the path
UNMATCHED = "<unmatched>"
_MAX_PATH = 200


class AccessLog:
    """Pure ASGI middleware: sees the status of every answer, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        status = 500  # if the app raises before answering, the server answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                _record(scope, status, time.perf_counter() - started, request_id)


def _record(scope: Scope, status: int, took_s: float, request_id: str) -> None:
    method = str(scope["method"])
    route = _template(scope)
    metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
    metrics.HTTP_DURATION.labels(method, route).observe(took_s)
    raw = scope.get("raw_path") or str(scope["path"]).encode()
    log.info(
        "http.request",
        method=method,
        route=route,
        path=raw.split(b"?", 1)[0].decode("latin-1")[:_MAX_PATH],
        status=status,
        duration_ms=round(took_s * 1000, 1),
        request_id=request_id,
    )


def _template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None) if isinstance(route, BaseRoute) else None
    return path if isinstance(path, str) else UNMATCHED


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            given = value.decode("latin-1")
            if _TOKEN.fullmatch(given):
                return given
    return uuid.uuid4().hex
