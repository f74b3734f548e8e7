"""GET /ui/jobs: the job table, newest first, 50 a page, filtered, with thumbnails."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.exc import OperationalError

from imagegen.worker.db import session_scope
from imagegen.worker.errors import JobRequestError

from ..jobs import _decode, _encode
from . import queries
from .guard import Viewer, settings_of, ui_caller
from .render import page

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/jobs")
def jobs_page(request: Request, viewer: Annotated[Viewer, Depends(ui_caller)]) -> Response:
    return render_jobs(request, viewer)


def render_jobs(request: Request, viewer: Viewer) -> Response:
    """The page for this request's query string (the benchmark calls it as the route does)."""
    raw = dict(request.query_params)
    try:
        filters = queries.parse_filters(raw)
        if raw.get("cursor"):
            filters = _with_cursor(filters, raw["cursor"])
    except queries.BadFilter as exc:
        return _page(request, viewer, [], {}, None, status=422, error=str(exc))
    tenant_id = viewer.caller.tenant_id
    try:
        with session_scope(settings_of(request).database_url) as db:
            options = queries.choices(db, tenant_id)
            rows = queries.list_rows(db, filters, tenant_id)
    except OperationalError as exc:
        if not queries.timed_out(exc):
            raise
        seconds = queries.SEARCH_TIMEOUT_MS / 1000
        why = f"this search took over {seconds:g} s: narrow it (since, until, status, tenant)"
        return _page(request, viewer, [], filters.given, None, status=503, error=why)
    if filters.category and filters.category not in options["categories"]:
        options["categories"].append(filters.category)
    shown = [_row(row) for row in rows[: queries.PAGE]]
    next_href = None
    if len(rows) > queries.PAGE:
        last = rows[queries.PAGE - 1]
        cursor = _encode(last["created_at"], last["id"])
        next_href = "/ui/jobs?" + urlencode({**filters.given, "cursor": cursor})
    return _page(request, viewer, shown, filters.given, next_href, options=options)


def _with_cursor(filters: queries.Filters, cursor: str) -> queries.Filters:
    try:
        before = _decode(cursor)
    except JobRequestError:
        raise queries.BadFilter("cursor: not a cursor of this page") from None
    from dataclasses import replace

    return replace(filters, before=before)


def _row(row: dict[str, Any]) -> dict[str, Any]:
    images = row["images"] or []
    stored = row["images_purged_at"] is None and bool(images and images[0].get("storage_key"))
    return {**row, "stored": stored, "image_count": len(images)}


def _page(
    request: Request,
    viewer: Viewer,
    rows: list[dict[str, Any]],
    given: dict[str, str],
    next_href: str | None,
    status: int = 200,
    **extra: Any,
) -> Response:
    extra.setdefault("options", {"statuses": [], "categories": [], "tenants": [], "sources": []})
    return page(
        request,
        "jobs.html",
        viewer,
        status=status,
        rows=rows,
        given=given,
        next_href=next_href,
        **extra,
    )
