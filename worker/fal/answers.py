"""Turn whatever fal answered into one of our errors (see ``worker.errors``).

Pure functions over status code, headers and body, so every shape fal uses can be
tested without a network. Headers win when present: ``X-Fal-Error-Type`` names the
error and ``X-Fal-Retryable`` says whether it may pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from imagegen.worker.constants import CONTENT_POLICY, SOFT_BLOCK_CATEGORIES, UNSPECIFIED_CATEGORY
from imagegen.worker.errors import (
    AccountLocked,
    FalError,
    PermanentFalError,
    PolicyRefusal,
    RequestCancelled,
    TransientFalError,
)

#: fal model and request error types that may pass on a new try.
RETRYABLE_ERROR_TYPES = frozenset(
    {
        "internal_server_error",
        "internal_error",
        "generation_timeout",
        "downstream_service_error",
        "downstream_service_unavailable",
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
    }
)
TRANSIENT_STATUS_CODES = frozenset({408, 409, 425, 429})
DEFAULT_REFUSAL_MESSAGE = "This request was flagged by fal's content checker."
_MAX_TEXT = 300


def parse_json(body: bytes) -> Any:
    """The body as JSON, or None when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def retry_after_s(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # asctime and "-0000" dates are UTC
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _header_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("true", "1", "yes")


def _first_entry(detail: Any) -> dict[str, Any] | None:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return detail[0]
    return None


def _error_type(body: Any, headers: Mapping[str, str]) -> str | None:
    if header := headers.get("x-fal-error-type"):
        return header
    if not isinstance(body, dict):
        return None
    detail = body.get("detail")
    if isinstance(detail, dict) and detail.get("error") == CONTENT_POLICY:
        return CONTENT_POLICY
    if first := _first_entry(detail):
        return str(first.get("type")) if first.get("type") else None
    value = body.get("error_type")
    return str(value) if value else None


def refusal_from(body: Any, *, http_status: int | None, error_type: str | None) -> PolicyRefusal:
    """A refusal from any of fal's shapes; an unknown category is kept verbatim."""
    detail = body.get("detail") if isinstance(body, dict) else None
    category, message, stored = UNSPECIFIED_CATEGORY, DEFAULT_REFUSAL_MESSAGE, detail
    if isinstance(detail, dict):  # the seed's 400: {"detail": {"error", "category", "message"}}
        category = str(detail.get("category") or category)
        message = str(detail.get("message") or message)
    elif first := _first_entry(detail):  # fal's documented 422: {"detail": [{"type", "msg"}]}
        raw_ctx = first.get("ctx")
        ctx: dict[str, Any] = raw_ctx if isinstance(raw_ctx, dict) else {}
        category = str(ctx.get("category") or category)
        message = str(first.get("msg") or message)
        stored = first
    elif isinstance(detail, str) and detail:
        message = detail
    return PolicyRefusal(
        category,
        message,
        soft=category in SOFT_BLOCK_CATEGORIES,
        http_status=http_status,
        error_type=error_type or CONTENT_POLICY,
        detail=stored,
    )


def _describe(status: int, body: Any, raw: bytes) -> tuple[str, Any]:
    """A short message a person can act on, and the detail worth storing."""
    if isinstance(body, dict):
        detail = body.get("detail", body)
        first = _first_entry(detail)
        text = first.get("msg") if first else detail
        return f"fal answered HTTP {status}: {str(text)[:_MAX_TEXT]}", first or detail
    if raw.lstrip()[:1] == b"<":
        return f"fal answered HTTP {status} with an HTML error page", None
    if not raw:
        return f"fal answered HTTP {status} with an empty body", None
    return f"fal answered HTTP {status} with a body that is not JSON", None


def classify_answer(status: int, headers: Mapping[str, str], raw: bytes) -> FalError:
    """Classify an HTTP error answer (status >= 400) from any fal endpoint."""
    headers = {k.lower(): v for k, v in headers.items()}
    body = parse_json(raw)
    error_type = _error_type(body, headers)
    if error_type == CONTENT_POLICY:
        return refusal_from(body, http_status=status, error_type=error_type)
    message, detail = _describe(status, body, raw)
    common: dict[str, Any] = {"http_status": status, "error_type": error_type, "detail": detail}
    if status == 403 and "locked" in message.lower():
        return AccountLocked(f"fal account is locked: {message}", **common)
    if status == 401 or status == 403:
        return PermanentFalError(f"{message} (check FAL_KEY)", **common)
    retryable = _header_bool(headers.get("x-fal-retryable"))
    if retryable is None:
        retryable = (
            status in TRANSIENT_STATUS_CODES or status >= 500 or error_type in RETRYABLE_ERROR_TYPES
        )
    if retryable:
        return TransientFalError(
            message, retry_after_s=retry_after_s(headers.get("retry-after")), **common
        )
    return PermanentFalError(message, **common)


def classify_completed_error(error_type: str | None, error: str | None) -> FalError:
    """Classify a COMPLETED status that carries ``error``/``error_type``."""
    message = f"fal reported the generation failed: {error or error_type}"
    if error_type == CONTENT_POLICY:
        return PolicyRefusal(
            UNSPECIFIED_CATEGORY,
            error or DEFAULT_REFUSAL_MESSAGE,
            soft=False,
            error_type=error_type,
            detail={"error": error, "error_type": error_type},
        )
    detail = {"error": error, "error_type": error_type}
    if error_type in ("client_cancelled", "client_disconnected"):
        return RequestCancelled(
            "the request was cancelled at fal", error_type=error_type, detail=detail
        )
    if error_type in RETRYABLE_ERROR_TYPES:
        return TransientFalError(message, error_type=error_type, detail=detail, resubmit=True)
    return PermanentFalError(message, error_type=error_type, detail=detail)
