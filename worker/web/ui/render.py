"""Jinja2 pages: autoescaped (prompts are hostile input), no cache between users.

Every page gets the viewer (for the nav: who is logged in) and its CSRF token.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from . import session
from .guard import Viewer, settings_of

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: pages show a signed-in person's data: never stored by a shared cache, never framed
HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' https: data:; "
    "style-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "Referrer-Policy": "same-origin",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    return env


def when(value: datetime | None) -> str:
    """A timestamp as people read it (UTC, to the second)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def page(
    request: Request,
    template: str,
    viewer: Viewer | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    csrf = session.csrf_token(settings_of(request), viewer.binding) if viewer else ""
    who = None
    if viewer is not None:
        who = "operator" if viewer.caller.operator else f"tenant {viewer.caller.tenant_name}"
    html = environment().get_template(template).render(viewer=viewer, who=who, csrf=csrf, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)
