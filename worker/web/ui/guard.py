"""Who is looking at a page: a bearer key (scripts, tests) or the session cookie.

``ui_caller`` is the pages' dependency. It puts the ``Caller`` on ``request.state`` (as the
API's ``require_caller`` does, so the API's tenant scoping applies unchanged) and the
``Viewer`` (caller, CSRF binding) it returns. No credentials: a redirect to the login page.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select

from imagegen.models import Tenant, TenantKey
from imagegen.worker.db import session_scope
from imagegen.worker.settings import Settings
from imagegen.worker.tenants.resolve import OPERATOR, Caller, key_hash

from ..auth import caller_for_key
from ..errors import Unauthorized
from . import session


class LoginRequired(Exception):
    """No credentials (or an expired or forged cookie): the login page (303)."""


class PageError(Exception):
    """An HTML error page: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Viewer:
    caller: Caller
    #: what this request's CSRF token is bound to (the cookie, or the bearer key's hash)
    binding: str
    #: logged in with the cookie (shows the logout button's meaning; bearer has none)
    cookie: bool


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def operator_tag(settings: Settings) -> str:
    """``op:`` and a fingerprint of IMAGEGEN_API_KEY: a new key ends operator sessions even
    when IMAGEGEN_UI_SECRET stays."""
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    return f"{session.OPERATOR}:{session.csrf_token(settings, 'operator ' + key)[:16]}"


def session_subject(settings: Settings, key: str, caller: Caller) -> str:
    """What a new session's cookie names: the operator tag, or the tenant key's id."""
    if caller.operator:
        return operator_tag(settings)
    with session_scope(settings.database_url) as db:
        key_id = db.execute(
            select(TenantKey.id).where(TenantKey.key_hash == key_hash(key))
        ).scalar_one()
    return str(key_id)


def _cookie_caller(settings: Settings, who: str) -> Caller | None:
    """The caller a verified cookie names, if its key still stands."""
    if who == operator_tag(settings):
        return OPERATOR
    try:
        key_id = uuid.UUID(who)
    except ValueError:
        return None
    with session_scope(settings.database_url) as db:
        found = db.execute(
            select(Tenant.id, Tenant.name)
            .join(TenantKey, TenantKey.tenant_id == Tenant.id)
            .where(TenantKey.id == key_id, TenantKey.revoked_at.is_(None))
        ).one_or_none()
    return Caller(tenant_id=found[0], tenant_name=found[1]) if found is not None else None


def ui_caller(request: Request) -> Viewer:
    settings = settings_of(request)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given:
        try:
            caller = caller_for_key(settings, given.strip())
        except Unauthorized:
            raise PageError(401, "wrong or revoked key") from None
        viewer = Viewer(caller, session.bearer_binding(given.strip()), cookie=False)
    else:
        verified = session.verify(settings, request.cookies.get(session.COOKIE, ""))
        found = _cookie_caller(settings, verified.who) if verified is not None else None
        if verified is None or found is None:
            raise LoginRequired
        viewer = Viewer(found, verified.token, cookie=True)
    request.state.caller = viewer.caller
    return viewer
