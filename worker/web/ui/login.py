"""Log in (a key in a form, once) and out; the key itself is never stored in the cookie."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ..auth import caller_for_key
from ..errors import Unauthorized
from . import session
from .guard import session_subject, settings_of
from .render import HEADERS, page

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", 303)


@router.get("/login")
def login_form(request: Request) -> Response:
    return page(request, "login.html", None)


@router.post("/login")
def login(request: Request, key: Annotated[str, Form()] = "") -> Response:
    settings = settings_of(request)
    key = key.strip()
    try:
        caller = caller_for_key(settings, key)
    except Unauthorized:
        return page(request, "login.html", None, status=401, error="wrong or revoked key")
    token = session.issue(settings, session_subject(settings, key, caller))
    answer = RedirectResponse("/ui/jobs", 303, headers=HEADERS)
    answer.set_cookie(
        session.COOKIE,
        token,
        max_age=session.MAX_AGE_S,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )
    return answer


@router.post("/logout")
def logout(request: Request) -> Response:
    answer = RedirectResponse("/ui/login", 303, headers=HEADERS)
    answer.delete_cookie(
        session.COOKIE, path="/ui", httponly=True, samesite="strict", secure=_https(request)
    )
    return answer


def _https(request: Request) -> bool:
    """Secure cookies behind https (a proxy that terminates TLS says so in X-Forwarded-Proto,
    which uvicorn applies for trusted proxies)."""
    return request.url.scheme == "https"
