"""Reads for people and programs: one job, a filtered list, counts."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session, selectinload

from imagegen.models import OPEN_STATUSES, Job, JobAttempt, JobCount, JobStatus
from imagegen.worker import contract
from imagegen.worker.errors import JobNotFound


def get_job(*, session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> Job:
    """The job; with ``tenant_id`` only that tenant's (another's is as unknown as no job)."""
    query = select(Job).where(Job.id == job_id).options(selectinload(Job.attempt_rows))
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    job = session.execute(query).scalar_one_or_none()
    if job is None:
        raise JobNotFound(f"no job with id {job_id}")
    return job


def list_jobs(
    *,
    session: Session,
    status: JobStatus | None = None,
    category: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
    tenant_id: uuid.UUID | None = None,
) -> list[Job]:
    """Newest first; each filter is served by an index on (column, created_at).

    ``before`` (the created_at and id of the last row of a page) continues after that row;
    ``tenant_id``: that tenant's jobs only (None: every tenant's).
    """
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    if before is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(*before))
    if status is not None:
        query = query.where(Job.status == status)
    if category is not None:
        query = query.where(Job.refusal_category == category)
    if since is not None:
        query = query.where(Job.created_at >= since)
    return list(session.execute(query).scalars())


def stats(*, session: Session, tenant_id: uuid.UUID | None = None) -> dict[str, Any]:
    """Counts by status and by refusal category, plus submissions sent to fal.

    On Postgres from the totals triggers keep (``models.JobCount``), and a live count of the
    open jobs only; elsewhere (SQLite), and for one tenant (``tenant_id``: the totals are
    not kept per tenant), by counting the tables.
    """
    if tenant_id is not None:
        by_status, refusals, submissions = live_counts(session, tenant_id)
    elif session.get_bind().dialect.name == "postgresql":
        by_status, refusals, submissions = _kept_counts(session)
    else:
        by_status, refusals, submissions = live_counts(session)
    by_category: dict[str, int] = {}
    by_source: dict[str, dict[str, int]] = {"fal": {}, "prefilter": {}}
    for category, source, count in refusals:
        by_category[category] = by_category.get(category, 0) + count
        by_source.setdefault(source or "fal", {})[category] = count
    return {
        "total": sum(by_status.values()),
        "by_status": {s.value: by_status.get(s.value, 0) for s in JobStatus},
        "by_refusal_category": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        #: fal's own refusals, and our pre-filter's (nothing was sent to fal for those)
        "by_refusal_source": by_source,
        "fal_submissions": submissions,
    }


_Refusals = list[tuple[str, str | None, int]]


def _status_counts(session: Session, *where: Any) -> dict[str, int]:
    query = select(Job.status, func.count()).where(*where).group_by(Job.status)
    return {status.value: count for status, count in session.execute(query).all()}


def live_counts(
    session: Session, tenant_id: uuid.UUID | None = None
) -> tuple[dict[str, int], _Refusals, int]:
    mine = [] if tenant_id is None else [Job.tenant_id == tenant_id]
    by_status = _status_counts(session, *mine)
    refusals = [
        (str(category), source, count)
        for category, source, count in session.execute(
            select(Job.refusal_category, Job.refusal_source, func.count())
            .where(Job.refusal_category.is_not(None), *mine)
            .group_by(Job.refusal_category, Job.refusal_source)
        ).all()
    ]
    attempts = select(func.count()).select_from(JobAttempt)
    if tenant_id is not None:
        attempts = attempts.join(Job, Job.id == JobAttempt.job_id).where(*mine)
    submissions = session.execute(attempts).scalar_one()
    return by_status, refusals, submissions


def _kept_counts(session: Session) -> tuple[dict[str, int], _Refusals, int]:
    by_status = _status_counts(session, Job.status.in_(OPEN_STATUSES))
    totals = session.execute(
        select(
            JobCount.key, JobCount.refusal_category, JobCount.refusal_source, func.sum(JobCount.n)
        ).group_by(JobCount.key, JobCount.refusal_category, JobCount.refusal_source)
    ).all()
    refusals: _Refusals = []
    submissions = 0
    for key, category, source, count in totals:
        count = int(count)
        if count == 0:  # moved on (a corrected category, a removed job): shown nowhere
            continue
        if key == "fal_submissions":
            submissions += count
            continue
        by_status[key] = by_status.get(key, 0) + count
        if category:
            refusals.append((category, source or None, count))
    return by_status, refusals, submissions


#: an image's URL for callers: (job id, index, the stored image) -> URL (None: fal's)
ImageLink = Callable[[uuid.UUID, int, dict[str, Any]], str | None]


def job_to_dict(
    job: Job, *, with_attempts: bool = False, link: ImageLink | None = None
) -> dict[str, Any]:
    """The JSON shape of a job (``worker.contract.Job``), the one place it is built: the
    CLI's ``--json``, the HTTP API and job callbacks all send this. Every column is there;
    ``images`` is ``[]`` until the job succeeded; ``link`` makes a stored image's ``url``
    (``worker.media.links``)."""
    data: dict[str, Any] = {
        column: getattr(job, column) for column in _COLUMNS if column != "tenant"
    }
    data["id"] = str(job.id)
    data["tenant_id"] = str(job.tenant_id)
    data["tenant"] = job.tenant.name  # a many-to-one: one query per tenant per session
    data["retry_of"] = str(job.retry_of) if job.retry_of else None
    data["images"] = [_image(job, n, image, link) for n, image in enumerate(job.images or [])]
    data["inputs"] = job.inputs or []
    if not with_attempts:
        return contract.Job.model_validate(data).model_dump(mode="json")
    data["attempt_log"] = [
        {column: getattr(a, column) for column in _ATTEMPT_COLUMNS} for a in job.attempt_rows
    ]
    return contract.JobDetail.model_validate(data).model_dump(mode="json")


def _image(job: Job, index: int, image: dict[str, Any], link: ImageLink | None) -> dict[str, Any]:
    shown = {**image, "fal_url": image.get("url")}
    if image.get("storage_key") and job.images_purged_at is None and link is not None:
        shown["url"] = link(job.id, index, image) or shown["url"]
    return shown


_COLUMNS = tuple(contract.Job.model_fields)
_ATTEMPT_COLUMNS = tuple(contract.Attempt.model_fields)
