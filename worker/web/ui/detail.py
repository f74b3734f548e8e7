"""GET /ui/jobs/{id} (prompt, parameters, timeline, refusal, images, cost, callbacks) and
POST /ui/jobs/{id}/cancel (CSRF token of the session checked first)."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from imagegen.models import CallbackDelivery, Job
from imagegen.worker.db import session_scope
from imagegen.worker.errors import JobNotFound
from imagegen.worker.jobs import queries
from imagegen.worker.jobs.cancel import cancel

from . import session
from .guard import PageError, Viewer, settings_of, ui_caller
from .render import HEADERS, page
from .timeline import events

router = APIRouter(prefix="/ui", include_in_schema=False)


def _job(request: Request, viewer: Viewer, job_id: str) -> Any:
    """The job as the page shows it; PageError 404 for an unknown id or another tenant's."""
    try:
        wanted = uuid.UUID(job_id)
    except ValueError:
        raise PageError(404, "no such job") from None
    with session_scope(settings_of(request).database_url) as db:
        try:
            job = queries.get_job(session=db, job_id=wanted, tenant_id=viewer.caller.tenant_id)
        except JobNotFound:
            raise PageError(404, "no such job") from None
        shown = _shown(job)
        shown["deliveries"] = _deliveries(db, wanted)
        return shown


def _deliveries(db: Any, job_id: uuid.UUID) -> list[Any]:
    query = (
        select(CallbackDelivery)
        .where(CallbackDelivery.job_id == job_id)
        .order_by(CallbackDelivery.attempt, CallbackDelivery.id)
    )
    return list(db.execute(query).scalars())


def _shown(job: Job) -> dict[str, Any]:
    images = []
    for n, image in enumerate(job.images or []):
        stored = bool(image.get("storage_key")) and job.images_purged_at is None
        src = f"/ui/jobs/{job.id}/image/{n}" if stored else image.get("url")
        images.append({"n": n, "src": src, "stored": stored, **_size(image)})
    return {
        "job": job,
        "tenant": job.tenant.name,
        "params": json.dumps(job.params or {}, indent=2, sort_keys=True),
        "events": events(job),
        "images": images,
        "callback_host": urlsplit(job.callback_url).hostname if job.callback_url else None,
    }


def _size(image: dict[str, Any]) -> dict[str, Any]:
    return {key: image.get(key) for key in ("width", "height", "content_type", "bytes")}


@router.get("/jobs/{job_id}")
def job_page(
    job_id: str, request: Request, viewer: Annotated[Viewer, Depends(ui_caller)]
) -> Response:
    shown = _job(request, viewer, job_id)
    notice = request.query_params.get("notice")
    return page(request, "job.html", viewer, notice=_NOTICES.get(notice or ""), **shown)


_NOTICES = {"cancelled": "Cancelled.", "ended": "It had already ended: nothing to cancel."}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    job_id: str,
    request: Request,
    viewer: Annotated[Viewer, Depends(ui_caller)],
    csrf: Annotated[str, Form()] = "",
) -> Response:
    settings = settings_of(request)
    if not session.csrf_ok(settings, viewer.binding, csrf):
        raise PageError(403, "the form's token is missing or not this session's: reload the page")
    shown = _job(request, viewer, job_id)  # 404 before anything moves
    status = cancel(shown["job"].id, settings=settings, app=request.app.state.celery)
    notice = "cancelled" if status == "cancelled" else "ended"
    return RedirectResponse(f"/ui/jobs/{shown['job'].id}?notice={notice}", 303, headers=HEADERS)
