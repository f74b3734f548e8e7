"""The API's error answers: always JSON, one line (``{detail: [{field, message}]}`` for 422).

A service that does not answer (Postgres down, full or not migrated; Redis down) is a
503 naming it, its DSN without the password, and logged as one line. Anything unforeseen
is a JSON 500 (uvicorn logs its traceback: that one is a bug).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen.worker.contract import ErrorBody, ValidationErrorBody
from imagegen.worker.errors import (
    EnqueueError,
    IdempotencyConflict,
    JobConflict,
    JobNotFound,
    JobRequestError,
    QuotaExceeded,
    StorageFailed,
)
from imagegen.worker.logs import get_logger
from imagegen.worker.settings import Settings

log = get_logger(__name__)
_Handler = Callable[[Request, Any], Awaitable[JSONResponse] | JSONResponse]

#: the errors any route may answer, for OpenAPI (FastAPI's own 422 schema is not what we send)
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key"},
    422: {"model": ValidationErrorBody, "description": "Invalid request; nothing was written"},
    429: {"model": ErrorBody, "description": "Over a tenant quota (named; Retry-After)"},
    500: {"model": ErrorBody, "description": "A bug: the API's log has the details"},
    503: {"model": ErrorBody, "description": "The database or the broker does not answer"},
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "The body is over IMAGEGEN_API_MAX_BODY_BYTES"}
}


class Unauthorized(Exception):
    pass


def install(app: FastAPI) -> None:
    handlers: dict[Any, _Handler] = {
        Unauthorized: _unauthorized,
        JobRequestError: lambda _, exc: _json(422, exc.problems),
        IdempotencyConflict: lambda _, exc: _json(422, [_key_problem(exc)]),
        QuotaExceeded: lambda _, exc: _json(
            429, str(exc), {"Retry-After": str(exc.retry_after_s), "X-Imagegen-Quota": exc.quota}
        ),
        RequestValidationError: lambda _, exc: _json(422, [problem(e) for e in exc.errors()]),
        JobNotFound: lambda _, exc: _json(404, str(exc)),
        JobConflict: lambda _, exc: _json(409, str(exc)),
        EnqueueError: _unavailable,
        StorageFailed: _unavailable,
        HTTPException: _http,
        OperationalError: _database,
        InterfaceError: _database,
        ProgrammingError: _database,
        PoolTimeout: _database,
        BrokerError: _unavailable,
        RedisConnectionError: _unavailable,
        Exception: _internal,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)


def _json(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _unauthorized(_: Request, __: Exception) -> JSONResponse:
    detail = "missing or wrong API key: send Authorization: Bearer <key>"
    return _json(401, detail, {"WWW-Authenticate": "Bearer"})


def _key_problem(exc: IdempotencyConflict) -> dict[str, str]:
    return {"field": "Idempotency-Key", "message": str(exc)}


def problem(error: Any) -> dict[str, str]:
    """One pydantic/FastAPI error as ``{field, message}``."""
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "invalid")
        return {"field": "body", "message": f"the body is not valid JSON: {reason}"}
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return {"field": ".".join(loc) or "body", "message": str(error.get("msg", "invalid"))}


def _http(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not read the body
        reason = (
            "not valid UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError) else "unreadable"
        )
        return _json(422, [{"field": "body", "message": f"the body is {reason}"}])
    detail = str(exc.detail)
    if exc.status_code == 413:
        detail = _too_large(_settings(request), request.url.path)
    return _json(exc.status_code, detail, dict(exc.headers or {}))


UPLOADS_PATH = "/jobs/uploads"


def body_limit(settings: Settings, path: str) -> int:
    """The upload route takes its input images (IMAGEGEN_INPUT_MAX_BYTES each) and a job."""
    if path == UPLOADS_PATH:
        return settings.input_max_bytes * (settings.input_max_images + 2) + 1_048_576
    return settings.api_max_body_bytes


def _too_large(settings: Settings, path: str = "") -> str:
    limit = body_limit(settings, path)
    if path == UPLOADS_PATH:
        return f"the upload is over {limit} bytes (IMAGEGEN_INPUT_MAX_BYTES per image)"
    return f"the request body is over {limit} bytes (IMAGEGEN_API_MAX_BODY_BYTES)"


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _database(request: Request, exc: Exception) -> JSONResponse:
    message = database_problem(exc, _settings(request).database_url)
    if message is None:  # a ProgrammingError that is our bug, not a missing migration
        return _internal(request, exc)
    log.warning("api.database_unavailable", error=message)
    return _json(503, message)


def database_problem(exc: Exception, database_url: str) -> str | None:
    """One line saying why the database cannot serve, naming its DSN without the password;
    None when ``exc`` is not about the database being unusable."""
    dsn = _without_password(database_url)
    cause = str(getattr(exc, "orig", None) or exc)
    lowered = cause.lower()
    if "does not exist" in lowered or "no such table" in lowered:
        return f"the database {dsn} is not migrated: run `imagegen db upgrade`"
    if isinstance(exc, ProgrammingError):
        return None
    if "too many clients" in lowered or "remaining connection slots" in lowered:
        return (
            f"the database {dsn} refuses connections (too many clients): "
            "lower IMAGEGEN_DB_POOL_SIZE or raise Postgres max_connections"
        )
    if isinstance(exc, PoolTimeout):
        return f"no free connection to the database {dsn}: every pooled connection is busy"
    first = cause.strip().splitlines()[0] if cause.strip() else type(exc).__name__
    return f"the database {dsn} does not answer ({first[:200]}): is Postgres running there?"


def _without_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy can parse: name only its scheme
        return url.split("://", 1)[0] + "://..."


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, (EnqueueError, StorageFailed)):
        message = str(exc).splitlines()[0]
    else:
        broker = _without_password(_settings(request).redis_url)
        message = f"the broker {broker} does not answer ({type(exc).__name__}): is Redis running?"
    log.warning("api.broker_unavailable", error=message)
    return _json(503, message)


def _internal(_: Request, exc: Exception) -> JSONResponse:
    return _json(500, f"internal error ({type(exc).__name__}); the API's log has the details")


class BodyCap:
    """A 413 for a body over IMAGEGEN_API_MAX_BODY_BYTES: before reading it when its
    Content-Length says so, else as soon as the bytes streamed in pass the cap (raised
    from ``receive``, FastAPI hands it to the exception handlers)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope.get("path", ""))
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            response = _json(413, _too_large(self.settings, scope["path"]), {"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413)
            return message

        await self.app(scope, capped, send)
