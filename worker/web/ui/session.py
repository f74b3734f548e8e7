"""The dashboard's session cookie and CSRF tokens (stdlib HMAC, no extra dependency).

The cookie ``imagegen_ui`` holds who logged in (``op`` for the operator, or the id of the
tenant key used) and when, signed with IMAGEGEN_UI_SECRET (or a key derived from
IMAGEGEN_API_KEY): never the key itself. A tenant session ends when its key is revoked (the
key id is checked on every request); every session ends 12 hours after login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from imagegen.worker.settings import Settings

COOKIE = "imagegen_ui"
MAX_AGE_S = 12 * 3600
OPERATOR = "op"


@dataclass(frozen=True)
class Session:
    """A verified cookie: ``who`` is ``op`` or a tenant key's id; ``token`` the raw cookie."""

    who: str
    issued_at: int
    token: str


def signing_key(settings: Settings) -> bytes:
    """IMAGEGEN_UI_SECRET, or an HMAC of IMAGEGEN_API_KEY (its own purpose label, so the
    cookie key is never the API key itself)."""
    if settings.ui_secret is not None and settings.ui_secret.get_secret_value():
        return settings.ui_secret.get_secret_value().encode()
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    return hmac.digest(api_key.encode(), b"imagegen ui session v1", hashlib.sha256)


def _sign(key: bytes, purpose: str, data: str) -> str:
    digest = hmac.digest(key, f"{purpose}|{data}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue(settings: Settings, who: str, now: float | None = None) -> str:
    """A cookie value for ``who``."""
    body = json.dumps({"w": who, "t": int(now if now is not None else time.time())})
    payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    return f"{payload}.{_sign(signing_key(settings), 'cookie', payload)}"


def verify(settings: Settings, token: str, now: float | None = None) -> Session | None:
    """The session a cookie value stands for; None when forged, malformed or expired."""
    payload, _, signature = token.partition(".")
    expected = _sign(signing_key(settings), "cookie", payload)
    if not signature or not hmac.compare_digest(signature, expected):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        who, issued = str(data["w"]), int(data["t"])
    except (ValueError, KeyError, TypeError):
        return None
    age = (now if now is not None else time.time()) - issued
    if age < 0 or age > MAX_AGE_S:
        return None
    return Session(who=who, issued_at=issued, token=token)


def csrf_token(settings: Settings, binding: str) -> str:
    """The token a form of this session carries: an HMAC of its cookie (or, for a request
    with a bearer key, of that key's hash), so it is worthless in another session."""
    return _sign(signing_key(settings), "csrf", binding)


def csrf_ok(settings: Settings, binding: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(settings, binding), str(given))


def bearer_binding(key: str) -> str:
    """What a bearer request's CSRF token is bound to (the key's hash, not the key)."""
    return "bearer:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
