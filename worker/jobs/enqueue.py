"""The enqueue API for web apps: ``enqueue`` a prompt, get a job id back.

A job row is committed first (status ``queued``), then only its id is published to
the broker. If publishing fails the row is removed again and ``EnqueueError`` is raised,
so a caller never holds an id for a job no worker will see.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from imagegen.models import DEFAULT_TENANT_ID, Job, JobStatus, utcnow
from imagegen.worker import metrics
from imagegen.worker.cost.record import estimate
from imagegen.worker.db import session_scope
from imagegen.worker.errors import IdempotencyConflict, JobRequestError
from imagegen.worker.jobs import fairshare
from imagegen.worker.jobs.params import ImageSize, JobRequest, validate_request
from imagegen.worker.jobs.publish import (
    PUBLISH_BATCH,
    SENT_EVENTS_PER_MESSAGE,
    default_app,
    publish_many,
)
from imagegen.worker.logs import get_logger
from imagegen.worker.media.inputs import InputSource
from imagegen.worker.media.setup import discard_inputs, edit_inputs, split_inputs
from imagegen.worker.settings import Settings, get_settings
from imagegen.worker.tenants import cooldown
from imagegen.worker.tenants.quotas import check_quotas
from imagegen.worker.tenants.resolve import tenant_ids

#: re-exported: callers (``imagegen retry``, ``cancel``, tests) import them from here
__all__ = [
    "PUBLISH_BATCH",
    "SENT_EVENTS_PER_MESSAGE",
    "default_app",
    "enqueue",
    "enqueue_many",
    "enqueue_request",
    "publish_many",
]

log = get_logger(__name__)


def enqueue(
    prompt: str,
    *,
    size: ImageSize | None = None,
    quality: str | None = None,
    num_images: int | None = None,
    output_format: str | None = None,
    idempotency_key: str | None = None,
    deadline_s: float | None = None,
    callback_url: str | None = None,
    tenant: str | None = None,
    end_user: str | None = None,
    images: Sequence[str | Path] = (),
    mask: str | Path | None = None,
    consent: str | Path | None = None,
    settings: Settings | None = None,
    app: Celery | None = None,
) -> uuid.UUID:
    """Queue one generation and return its job id.

    ``images`` (URLs or local paths; ``mask``, ``consent`` likewise) make it an edit job:
    each is checked (an image by its content, within the limits) and stored before the job
    is queued; a consent reference is passed to fal as one more input image.

    Raises ``JobRequestError`` (a ``ValueError``) with a clear message for invalid input,
    before anything is written or published: ``worker.jobs.params.validate_request`` checks it,
    as it does the HTTP API's (strict types: ``num_images="2"`` is refused); a
    ``callback_url`` needs IMAGEGEN_CALLBACK_SECRET. ``IdempotencyConflict`` (a subclass) when
    the key names a job with other parameters. With a known key and the same parameters,
    returns the existing job's id. ``deadline_s`` (default IMAGEGEN_JOB_DEADLINE_S) bounds
    how long the job may take from now; past it the job ends ``failed``. ``callback_url``
    gets the job's JSON, HMAC-signed, when it ends (see ``worker.jobs.callbacks``).
    ``tenant`` (a tenant's name; default: the ``default`` tenant) owns the job, an unknown
    one is a JobRequestError naming it; ``end_user`` is the caller's own user id (1-200
    printable characters), kept with the job.
    """
    settings = settings or get_settings()
    fields = {
        "prompt": prompt,
        "image_size": size,
        "quality": quality,
        "num_images": num_images,
        "output_format": output_format,
        "deadline_s": deadline_s,
        "callback_url": callback_url,
        "tenant": tenant,
        "end_user": end_user,
    }
    urls, files = split_inputs(images, mask, consent)
    fields.update(urls)
    request = validate_request(fields, idempotency_key=idempotency_key, settings=settings)
    return enqueue_request(request, settings=settings, app=app, uploads=files)


def enqueue_request(
    request: JobRequest,
    *,
    settings: Settings,
    app: Celery | None = None,
    uploads: Sequence[InputSource] = (),
) -> uuid.UUID:
    """Queue a request ``validate_request`` accepted (``enqueue``'s second half, and the
    HTTP API's); returns its job id, or the id of the job that already has its key.

    ``uploads``: input images given as files (the CLI's paths, the API's multipart parts)
    besides the request's URLs; any input makes it an edit job (IMAGEGEN_EDIT_MODEL)."""
    tenant_id = DEFAULT_TENANT_ID
    if request.tenant is not None:  # checked before anything is written or stored
        with session_scope(settings.database_url) as session:
            tenant_id = tenant_ids(session, [request.tenant])[request.tenant]
    row = _row(request, settings, utcnow(), tenant_id)
    sources = [*request.sources(), *uploads]
    if sources:  # an edit: priced on the edit model before its inputs are fetched
        row["estimated_cost_usd"] = estimate(
            settings, settings.edit_model, row["params"], len(sources)
        )
    inputs = edit_inputs(row, sources, settings)
    to_publish = fairshare.arrivals_wait(settings, [row])
    try:
        existing = _insert(request, row, settings)
    except BaseException:
        discard_inputs(inputs, settings)
        raise
    if existing is not None:
        discard_inputs(inputs, settings)  # the job that has the key keeps its own
        return existing
    _publish([row], to_publish, settings, app)
    return row["id"]


def _insert(request: JobRequest, row: dict[str, Any], settings: Settings) -> uuid.UUID | None:
    """Write the row; the id of the job that already has its key instead, if one does."""
    try:
        with session_scope(settings.database_url) as session:
            existing = _existing(session, request, row["tenant_id"], row.get("inputs"))
            if existing is not None:
                return existing
            cooldown.check(session, row["tenant_id"], row["end_user"], row["created_at"])
            check_quotas(session, row["tenant_id"], [row["estimated_cost_usd"]], row["created_at"])
            session.execute(insert(Job), [row])
    except IntegrityError:
        # Another caller created a job with this key between our read and our write.
        with session_scope(settings.database_url) as session:
            existing = _existing(session, request, row["tenant_id"], row.get("inputs"))
        if existing is None:
            raise
        return existing
    return None


def enqueue_many(
    items: Iterable[str | Mapping[str, Any]],
    *,
    settings: Settings | None = None,
    app: Celery | None = None,
) -> list[uuid.UUID]:
    """Queue many generations at once: one transaction, one broker connection.

    Each item is a prompt, or a mapping of ``enqueue``'s keyword arguments (``prompt``,
    ``size``, ``quality``, ``num_images``, ``output_format``, ``idempotency_key``,
    ``deadline_s``, ``callback_url``, ``tenant``, ``end_user``). Every item is validated
    before anything is written; the first invalid one raises ``JobRequestError`` naming its
    index (an unknown tenant: naming the tenant). Returns the ids in item order (an
    existing job's id for a known idempotency key).
    """
    settings = settings or get_settings()
    specs = [_spec(i, item, settings) for i, item in enumerate(items)]
    keys = [(spec.tenant, spec.idempotency_key) for spec in specs if spec.idempotency_key]
    if keys and len(set(keys)) != len(keys):
        raise JobRequestError("invalid job request: an idempotency key repeats in the batch")
    now = utcnow()
    rows: list[dict[str, Any]] = []
    ids: list[uuid.UUID] = []
    with session_scope(settings.database_url) as session:
        tenants = tenant_ids(session, [spec.tenant for spec in specs])
        for request in specs:
            existing = _existing(session, request, tenants[request.tenant])
            if existing is not None:
                ids.append(existing)
                continue
            row = _row(request, settings, now, tenants[request.tenant])
            rows.append(row)
            ids.append(row["id"])
        to_publish = fairshare.arrivals_wait(settings, rows)
        for who in {(row["tenant_id"], row["end_user"]) for row in rows}:
            cooldown.check(session, *who, now)
        for tenant_id in {row["tenant_id"] for row in rows}:
            mine = [r["estimated_cost_usd"] for r in rows if r["tenant_id"] == tenant_id]
            check_quotas(session, tenant_id, mine, now)
        if rows:
            session.execute(insert(Job), rows)
    _publish(rows, to_publish, settings, app)
    return ids


def _publish(
    rows: list[dict[str, Any]],
    to_publish: list[dict[str, Any]],
    settings: Settings,
    app: Celery | None,
) -> None:
    """The submit messages of the rows written ``queued`` (the others wait for a slot)."""
    publish_many([row["id"] for row in to_publish], settings, app)
    metrics.ENQUEUED.inc(len(rows) - len(to_publish))


def _spec(index: int, item: str | Mapping[str, Any], settings: Settings) -> JobRequest:
    fields: dict[str, Any] = {"prompt": item} if isinstance(item, str) else dict(item)
    key = fields.pop("idempotency_key", None)
    if "size" in fields:
        fields["image_size"] = fields.pop("size")
    try:
        request = validate_request(fields, idempotency_key=key, settings=settings)
    except JobRequestError as exc:
        raise JobRequestError(f"item {index}: {exc}", exc.problems) from None
    if request.sources():
        raise JobRequestError(f"item {index}: input images are not taken in bulk: enqueue it alone")
    return request


def _row(
    request: JobRequest, settings: Settings, now: datetime, tenant_id: uuid.UUID = DEFAULT_TENANT_ID
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "end_user": request.end_user,
        "prompt": request.prompt,
        "params": request.params(),
        "model": settings.model,
        "status": JobStatus.QUEUED,
        "idempotency_key": request.idempotency_key,
        "callback_url": request.callback_url,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "lease_until": now + timedelta(seconds=settings.queued_grace_s),
        "deadline_at": now + timedelta(seconds=request.deadline_s or settings.job_deadline_s),
        "estimated_cost_usd": estimate(settings, settings.model, request.params()),
    }


def _existing(
    session: Session,
    request: JobRequest,
    tenant_id: uuid.UUID,
    inputs: list[dict[str, Any]] | None = None,
) -> uuid.UUID | None:
    """The tenant's job with the request's idempotency key (another tenant's is not seen)."""
    if request.idempotency_key is None:
        return None
    job = session.execute(
        select(Job).where(
            Job.tenant_id == tenant_id, Job.idempotency_key == request.idempotency_key
        )
    ).scalar_one_or_none()
    if job is None:
        return None
    if (
        job.prompt != request.prompt
        or job.params != request.params()
        or _identity(job.inputs) != _identity(inputs)
    ):
        raise IdempotencyConflict(
            f"idempotency key {request.idempotency_key!r} is already used by job {job.id} "
            "with a different prompt, parameters or input images"
        )
    return job.id


def _identity(inputs: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    return [(str(i["role"]), str(i["sha256"])) for i in inputs or []]
