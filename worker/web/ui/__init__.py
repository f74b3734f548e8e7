"""The operator dashboard at /ui: server-rendered pages over the job table (docs/dashboard.md).

``mount(app)`` adds the pages, the static files and the handlers that answer the pages'
errors as HTML (the API's own answers stay JSON).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from . import detail, jobs_page, login, overview, thumbs
from .guard import LoginRequired, PageError, Viewer
from .render import STATIC, page

_TITLES = {401: "Not logged in", 403: "Forbidden", 404: "Not found", 422: "Bad request"}


def mount(app: FastAPI) -> None:
    for module in (login, jobs_page, detail, thumbs, overview):
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(PageError, _error_page)


def _to_login(_request: Request, _exc: Exception) -> Response:
    return RedirectResponse("/ui/login", 303)


def _error_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    title = _TITLES.get(exc.status, "Error")
    caller = getattr(request.state, "caller", None)  # logged in: the page keeps its nav
    viewer = Viewer(caller, binding="", cookie=False) if caller is not None else None
    return page(request, "error.html", viewer, status=exc.status, title=title, message=exc.message)
