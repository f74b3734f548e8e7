"""``imagegen retry ID``: a failed job tried again, as a new job linked to it.

The failed row stays as it ended (a terminal job never changes state); the new job has the
same prompt, parameters, model and callback URL, a fresh deadline, no idempotency key (the
old job keeps it), and ``retry_of`` naming the old one. A job is retried at most once (a
unique index on ``retry_of``): a second ``retry`` names the job that retried it; a failed
retry can itself be retried. Refused, succeeded and cancelled jobs are not retried.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from celery import Celery
from sqlalchemy import bindparam, insert, literal, select
from sqlalchemy.exc import IntegrityError

from imagegen.models import Job, JobStatus, UTCDateTime, utcnow
from imagegen.worker.db import session_scope
from imagegen.worker.errors import JobNotFound, NotRetryable
from imagegen.worker.jobs import enqueue as api
from imagegen.worker.jobs import state
from imagegen.worker.settings import Settings

JOBS = state.JOBS

_WHY_NOT = {
    JobStatus.REFUSED: "was refused ({category}): a refusal is not retried; change the prompt",
    JobStatus.SUCCEEDED: "succeeded: there is nothing to retry",
    JobStatus.CANCELLED: "was cancelled: enqueue it again to run it",
    JobStatus.QUEUED: "is still queued",
    JobStatus.WAITING: "is waiting for a fal slot (the fleet is at its cap)",
    JobStatus.SUBMITTING: "is being submitted to fal",
    JobStatus.AT_FAL: "is at fal",
    JobStatus.COLLECTING: "is being collected from fal",
    JobStatus.STORING: "succeeded at fal; its images are being stored",
}

_NOW = bindparam("now", type_=UTCDateTime())
#: the guarded write: the new row exists only if the old one is failed at this instant
_RETRY = insert(JOBS).from_select(
    [
        "id", "prompt", "params", "model", "status", "callback_url", "attempts",
        "created_at", "updated_at", "lease_until", "deadline_at", "retry_of",
        "tenant_id", "end_user",  # the retry is the same tenant's (and user's) job
    ],
    select(
        bindparam("new_id", type_=JOBS.c.id.type),
        JOBS.c.prompt,
        JOBS.c.params,
        JOBS.c.model,
        literal(JobStatus.QUEUED.value),
        JOBS.c.callback_url,
        literal(0),
        _NOW,
        _NOW,
        bindparam("lease_until", type_=UTCDateTime()),
        bindparam("deadline_at", type_=UTCDateTime()),
        JOBS.c.id,
        JOBS.c.tenant_id,
        JOBS.c.end_user,
    ).where(JOBS.c.id == bindparam("old_id"), JOBS.c.status == JobStatus.FAILED),
).returning(JOBS.c.id)  # fmt: skip


def retry(job_id: uuid.UUID, *, settings: Settings, app: Celery | None = None) -> uuid.UUID:
    """Queue a new attempt of failed job ``job_id``; returns the new job's id.

    Raises ``JobNotFound`` for an unknown id, ``NotRetryable`` (saying why) for a job that
    is not failed or was retried already.
    """
    new_id = uuid.uuid4()
    now = utcnow()
    params = {
        "new_id": new_id,
        "old_id": job_id,
        "now": now,
        "lease_until": now + timedelta(seconds=settings.queued_grace_s),
        "deadline_at": now + timedelta(seconds=settings.job_deadline_s),
    }
    try:
        with session_scope(settings.database_url) as session:
            inserted = session.execute(_RETRY, params).scalar_one_or_none()
    except IntegrityError:
        inserted = None  # retried already, by us or a concurrent retry
    if inserted is None:
        raise _why_not(job_id, settings)
    api.publish_many([new_id], settings, app)  # removes the row again if it cannot
    return new_id


def _why_not(job_id: uuid.UUID, settings: Settings) -> Exception:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            return JobNotFound(f"no job with id {job_id}")
        retried_as = session.execute(
            select(Job.id).where(Job.retry_of == job_id)
        ).scalar_one_or_none()
    if retried_as is not None:
        return NotRetryable(f"job {job_id} was already retried as job {retried_as}")
    reason = _WHY_NOT[job.status].format(category=job.refusal_category)
    return NotRetryable(f"job {job_id} {reason}")
