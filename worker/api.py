"""The enqueue API for web apps: ``enqueue`` a prompt, get a job id back.

A job row is committed first (status ``queued``), then only its id is published to
the broker. If publishing fails the row is removed again and ``EnqueueError`` is raised,
so a caller never holds an id for a job no worker will see.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import Job, JobStatus, utcnow
from worker import store
from worker.constants import RUN_JOB_TASK
from worker.db import session_scope
from worker.errors import EnqueueError, FalError, IdempotencyConflict, JobNotFound, JobRequestError
from worker.logs import get_logger
from worker.params import ImageSize, JobRequest, validate_request
from worker.settings import Settings, get_settings

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
    settings: Settings | None = None,
    app: Celery | None = None,
) -> uuid.UUID:
    """Queue one generation and return its job id.

    Raises ``JobRequestError`` (a ``ValueError``) with a clear message for invalid input,
    before anything is written or published; ``IdempotencyConflict`` (a subclass) when
    the key names a job with other parameters. With a known key and the same parameters,
    returns the existing job's id. ``deadline_s`` (default IMAGEGEN_JOB_DEADLINE_S) bounds
    how long the job may take from now; past it the job ends ``failed``.
    """
    request = validate_request(
        prompt=prompt,
        image_size=size,
        quality=quality,
        num_images=num_images,
        output_format=output_format,
        idempotency_key=idempotency_key,
    )
    settings = settings or get_settings()
    if deadline_s is not None and deadline_s <= 0:
        raise JobRequestError("invalid job request: deadline_s must be positive")
    job_id, now = uuid.uuid4(), utcnow()
    try:
        with session_scope(settings.database_url) as session:
            existing = _existing(session, request)
            if existing is not None:
                return existing
            session.add(
                Job(
                    id=job_id,
                    prompt=request.prompt,
                    params=request.params(),
                    model=settings.model,
                    status=JobStatus.QUEUED,
                    idempotency_key=request.idempotency_key,
                    lease_until=now + timedelta(seconds=settings.queued_grace_s),
                    deadline_at=now + timedelta(seconds=deadline_s or settings.job_deadline_s),
                )
            )
    except IntegrityError:
        # Another caller created a job with this key between our read and our write.
        with session_scope(settings.database_url) as session:
            existing = _existing(session, request)
        if existing is None:
            raise
        return existing
    _publish(job_id, settings, app)
    return job_id


def _existing(session: Session, request: JobRequest) -> uuid.UUID | None:
    if request.idempotency_key is None:
        return None
    job = session.execute(
        select(Job).where(Job.idempotency_key == request.idempotency_key)
    ).scalar_one_or_none()
    if job is None:
        return None
    if job.prompt != request.prompt or job.params != request.params():
        raise IdempotencyConflict(
            f"idempotency key {request.idempotency_key!r} is already used by job {job.id} "
            "with a different prompt or parameters"
        )
    return job.id


def _publish(job_id: uuid.UUID, settings: Settings, app: Celery | None) -> None:
    if app is None:
        from worker.celery_app import app as default_app

        app = default_app
    try:
        app.send_task(RUN_JOB_TASK, args=[str(job_id)], task_id=str(job_id))
    except (OperationalError, OSError) as exc:
        with session_scope(settings.database_url) as session:
            session.execute(delete(Job).where(Job.id == job_id))
        raise EnqueueError(f"the broker could not be reached, job not queued: {exc}") from exc


def cancel(job_id: uuid.UUID, *, settings: Settings | None = None) -> str:
    """Cancel a job: a queued one never reaches fal, a running one gets fal's cancel call.

    Returns the job's status afterwards (``cancelled``, or the terminal status it already
    had). Raises ``JobNotFound`` for an unknown id.
    """
    settings = settings or get_settings()
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        request_id, model = job.fal_request_id, job.model
        cancelled = store.finish(session=session, job_id=job_id, status=JobStatus.CANCELLED)
        status = JobStatus.CANCELLED if cancelled else job.status
    if cancelled and request_id is not None:
        from worker.fal_gateway import FalGateway

        gateway = FalGateway.from_settings(settings)
        try:
            gateway.cancel(model, request_id)
        except FalError as exc:  # already finished at fal, or unreachable: the row decides
            log.info("fal.cancel_failed", job_id=str(job_id), error=exc.message)
        finally:
            gateway.close()
    return status.value
