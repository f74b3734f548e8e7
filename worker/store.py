"""Writes over a job's life. Every function takes the session as a keyword argument."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from models import TERMINAL_STATUSES, AttemptOutcome, Job, JobAttempt, JobStatus, utcnow
from worker.errors import FalError, PolicyRefusal

_OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class JobSnapshot:
    """What a run needs to know about its job, read once when it claims it."""

    id: uuid.UUID
    prompt: str
    params: dict[str, Any]
    model: str
    attempts: int
    fal_request_id: str | None
    created_at: datetime


def claim(*, session: Session, job_id: uuid.UUID) -> JobSnapshot | None:
    """Mark the job running; None when it is unknown or already terminal."""
    now = utcnow()
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_OPEN))
        .values(status=JobStatus.RUNNING, updated_at=now)
        .returning(Job)
    ).scalar_one_or_none()
    if job is None:
        return None
    if job.started_at is None:
        job.started_at = now
    return JobSnapshot(
        job.id,
        job.prompt,
        dict(job.params),
        job.model,
        job.attempts,
        job.fal_request_id,
        job.created_at,
    )


def begin_attempt(*, session: Session, job_id: uuid.UUID) -> int:
    """Count one submission (before it is sent) and open its attempt row; returns its number."""
    number = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(attempts=Job.attempts + 1, updated_at=utcnow())
        .returning(Job.attempts)
    ).scalar_one()
    session.add(JobAttempt(job_id=job_id, number=number, outcome=AttemptOutcome.SENDING))
    return number


def retract_attempt(*, session: Session, job_id: uuid.UUID, number: int) -> None:
    """The POST never left (connection refused): it is not a submission."""
    session.execute(
        delete(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == number)
    )
    session.execute(update(Job).where(Job.id == job_id).values(attempts=Job.attempts - 1))


def record_submitted(*, session: Session, job_id: uuid.UUID, number: int, request_id: str) -> None:
    _update_attempt(
        session, job_id, number, fal_request_id=request_id, outcome=AttemptOutcome.SUBMITTED
    )
    session.execute(
        update(Job).where(Job.id == job_id).values(fal_request_id=request_id, updated_at=utcnow())
    )


def record_attempt_error(
    *, session: Session, job_id: uuid.UUID, number: int, error: FalError
) -> None:
    """Close an attempt with what went wrong (fal's first ``detail`` entry included)."""
    if isinstance(error, PolicyRefusal):
        outcome = AttemptOutcome.REFUSED
    else:
        outcome = AttemptOutcome.TRANSIENT if error.retryable else AttemptOutcome.PERMANENT
    _update_attempt(
        session,
        job_id,
        number,
        outcome=outcome,
        finished_at=utcnow(),
        http_status=error.http_status,
        error_type=error.error_type or type(error).__name__,
        detail=_jsonable(error),
    )


def forget_request(*, session: Session, job_id: uuid.UUID) -> None:
    """fal's request ended in failure: the next run submits anew."""
    session.execute(update(Job).where(Job.id == job_id).values(fal_request_id=None))


def latest_attempt(*, session: Session, job_id: uuid.UUID) -> int | None:
    return session.execute(
        select(JobAttempt.number)
        .where(JobAttempt.job_id == job_id)
        .order_by(JobAttempt.number.desc())
        .limit(1)
    ).scalar_one_or_none()


def finish(*, session: Session, job_id: uuid.UUID, status: JobStatus, **values: Any) -> bool:
    """Move an open job to a terminal status; False if it was already terminal."""
    assert status in TERMINAL_STATUSES
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_OPEN))
        .values(status=status, finished_at=now, updated_at=now, **values)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


def close_attempt(
    *, session: Session, job_id: uuid.UUID, number: int | None, outcome: AttemptOutcome
) -> None:
    if number is not None:
        _update_attempt(session, job_id, number, outcome=outcome, finished_at=utcnow())


def _update_attempt(session: Session, job_id: uuid.UUID, number: int, **values: Any) -> None:
    session.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id == job_id, JobAttempt.number == number)
        .values(**values)
    )


def _jsonable(error: FalError) -> Any:
    detail = error.detail
    base = {"message": error.message}
    if detail is None:
        return base
    if isinstance(detail, dict | list | str | int | float | bool):
        return {**base, "fal": detail}
    return {**base, "fal": repr(detail)}
