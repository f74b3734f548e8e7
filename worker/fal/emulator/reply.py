"""What a handler sends back: a status, headers and a body, or a socket-level action."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["send", "hang", "drop"]

REQUEST_ID_HEADER = "x-fal-request-id"
JSON_TYPE = "application/json"
HTML_TYPE = "text/html"

_NGINX_PAGE = (
    "<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}"
    "</h1></center><hr><center>nginx</center></body></html>"
)
_NGINX_REASONS = {
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}
PLAIN_ERROR_PAGE = "<!DOCTYPE html><html><body><h1>Something went wrong</h1></body></html>"


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, or an instruction to hang or drop the connection.

    `delay_s` postpones sending (the `slow:S` step).
    """

    status: int = 200
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    action: Action = "send"
    delay_s: float = 0.0


def json_reply(status: int, payload: Any, *headers: tuple[str, str]) -> Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status=status, body=body, headers=tuple(headers))


def rid_header(request_id: str | None = None) -> tuple[str, str]:
    """The x-fal-request-id header; a fresh id when no request exists."""
    return (REQUEST_ID_HEADER, request_id or str(uuid.uuid4()))


def html_reply(status: int, page: str) -> Reply:
    return Reply(status=status, body=page.encode(), content_type=HTML_TYPE)


def nginx_reply(status: int) -> Reply:
    reason = _NGINX_REASONS.get(status, "Bad Gateway")
    return html_reply(status, _NGINX_PAGE.format(code=status, reason=reason))


def truncated_json_reply(*headers: tuple[str, str]) -> Reply:
    body = b'{"request_id": "abc", "response_u'
    return Reply(status=200, body=body, headers=tuple(headers))


HANG = Reply(action="hang")
DROP = Reply(action="drop")
