"""Job routes: create (idempotent), read one, list with a cursor, stats, cancel."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request

from imagegen.models import JobStatus
from imagegen.worker.contract import Cancelled, JobDetail, Stats, TenantStats
from imagegen.worker.db import session_scope
from imagegen.worker.errors import EnqueueError, JobConflict, JobRequestError
from imagegen.worker.jobs import enqueue as api
from imagegen.worker.jobs import queries
from imagegen.worker.jobs.cancel import cancel
from imagegen.worker.jobs.input_rules import check_text
from imagegen.worker.jobs.params import validate_request
from imagegen.worker.jobs.tenant_stats import tenant_stats
from imagegen.worker.media.links import settings_link
from imagegen.worker.settings import Settings

from .auth import owned_fields, tenant_scope
from .errors import RESPONSES, TOO_LARGE
from .schemas import ErrorBody, JobCreated, JobIn, JobPage

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}
router = APIRouter(tags=["jobs"], responses=RESPONSES)
MAX_PAGE = 200


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobCreated,
    responses=TOO_LARGE,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": JobIn.model_json_schema()}},
        }
    },
)
def create_job(
    body: Annotated[dict[str, Any], Body()],
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobCreated:
    """Queue a generation. A repeated ``Idempotency-Key`` answers with the same job;
    the same key with another prompt or parameters is a 422."""
    settings = _settings(request)
    # The body is checked by the same function as worker.enqueue, not by FastAPI, so both
    # refuse the same requests with the same problems.
    fields = owned_fields(request, body)  # a tenant key's job is its tenant's
    job_request = validate_request(fields, idempotency_key=idempotency_key, settings=settings)
    try:
        job_id = api.enqueue_request(job_request, settings=settings, app=request.app.state.celery)
    except EnqueueError as exc:
        raise HTTPException(503, str(exc)) from None
    with session_scope(settings.database_url) as session:
        job = queries.get_job(session=session, job_id=job_id, tenant_id=tenant_scope(request))
        return JobCreated(id=str(job_id), status=job.status.value)


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=_NOT_FOUND)
def read_job(job_id: uuid.UUID, request: Request) -> dict[str, Any]:
    """One job with its attempt log (every submission to fal). Another tenant's job is a
    404, as an unknown id is."""
    with session_scope(_settings(request).database_url) as session:
        job = queries.get_job(session=session, job_id=job_id, tenant_id=tenant_scope(request))
        return queries.job_to_dict(job, with_attempts=True, link=_link(request))


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    request: Request,
    status: Annotated[JobStatus | None, Query()] = None,
    category: Annotated[str | None, Query(description="Refusal category.")] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, created at or after.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobPage:
    """Newest first, filtered; follow ``next_cursor`` for older jobs. A tenant key lists
    its tenant's jobs only."""
    if category is not None:
        _check_query("category", category)
    before = _decode(cursor) if cursor else None
    with session_scope(_settings(request).database_url) as session:
        rows = queries.list_jobs(
            session=session,
            status=status,
            category=category,
            since=since,
            limit=limit + 1,
            before=before,
            tenant_id=tenant_scope(request),
        )
        link = _link(request)
        page = [queries.job_to_dict(job, link=link) for job in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        next_cursor = _encode(last.created_at, last.id) if last is not None else None
    return JobPage(jobs=page, next_cursor=next_cursor)


@router.get("/stats", response_model=Stats)
def stats(request: Request) -> dict[str, Any]:
    """Counts by status and refusal category, and submissions sent to fal: a tenant key's
    of its own jobs only."""
    with session_scope(_settings(request).database_url) as session:
        return queries.stats(session=session, tenant_id=tenant_scope(request))


@router.get("/stats/tenants", response_model=list[TenantStats])
def stats_by_tenant(
    request: Request,
    since: Annotated[datetime | None, Query(description="ISO 8601, created at or after.")] = None,
) -> list[dict[str, Any]]:
    """Jobs, refusals by category and spend per tenant (a tenant key: its own line)."""
    with session_scope(_settings(request).database_url) as session:
        return tenant_stats(session, since=since, tenant_id=tenant_scope(request))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=Cancelled,
    responses={**_NOT_FOUND, 409: {"model": ErrorBody, "description": "It had already ended"}},
)
def cancel_job(job_id: uuid.UUID, request: Request) -> Cancelled:
    """Cancel: a queued job never reaches fal, a running one is cancelled there. Cancelling
    a cancelled job again is a 200; one that ended otherwise is a 409 naming its status.
    Another tenant's job is a 404, as an unknown id is."""
    _owned(request, job_id)
    status = cancel(job_id, settings=_settings(request), app=request.app.state.celery)
    if status != "cancelled":
        raise JobConflict(f"job {job_id} already {status}, not cancelled")
    return Cancelled(id=str(job_id), status="cancelled")


def _owned(request: Request, job_id: uuid.UUID) -> None:
    """JobNotFound (404) unless the caller may see the job (a tenant: only its own)."""
    scope = tenant_scope(request)
    if scope is not None:
        with session_scope(_settings(request).database_url) as session:
            queries.get_job(session=session, job_id=job_id, tenant_id=scope)


def _link(request: Request) -> queries.ImageLink:
    """Stored images by the URL the caller used to reach the API (or presigned, for S3)."""
    return settings_link(_settings(request), str(request.base_url))


def _check_query(name: str, value: str) -> None:
    """A query value the database could not take (a NUL byte) is a 422, not a 500."""
    try:
        check_text(name, value)
    except ValueError as exc:
        raise JobRequestError(str(exc), [{"field": name, "message": str(exc)}]) from None


def _encode(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, job_id = raw.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise JobRequestError(
            "invalid cursor", [{"field": "cursor", "message": "not a cursor from this API"}]
        ) from None
