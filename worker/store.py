"""Writes over a job's life. Every function takes the session as a keyword argument."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from models import (
    TERMINAL_STATUSES,
    AttemptOutcome,
    FalWebhook,
    Job,
    JobAttempt,
    JobStatus,
    utcnow,
)
from worker.constants import PARKED_FOR_WEBHOOK
from worker.errors import FalError, PolicyRefusal

#: Core tables: writes skip the ORM's bulk-update machinery (a large share of a job's CPU).
JOBS: Table = Job.__table__  # type: ignore[assignment]
ATTEMPTS: Table = JobAttempt.__table__  # type: ignore[assignment]
WEBHOOKS: Table = FalWebhook.__table__  # type: ignore[assignment]
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
    deadline_at: datetime | None
    callback_url: str | None


def claim(*, session: Session, job_id: uuid.UUID, owner: str, lease_s: float) -> JobSnapshot | None:
    """Take the job's lease and mark it running.

    None when the job is unknown, terminal, or running under another run's live lease
    (two runs never work on one job at the same time; the sweeper re-publishes the job if
    that run dies and its lease expires). A job parked for its webhook is claimable.
    """
    now = utcnow()
    claimable = or_(
        JOBS.c.status == JobStatus.QUEUED,
        and_(
            JOBS.c.status == JobStatus.RUNNING,
            or_(
                JOBS.c.lease_until.is_(None),
                JOBS.c.lease_until < now,
                JOBS.c.lease_owner == PARKED_FOR_WEBHOOK,
            ),
        ),
    )
    row = session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, claimable)
        .values(
            status=JobStatus.RUNNING,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_s),
            started_at=func.coalesce(JOBS.c.started_at, now),
            updated_at=now,
        )
        .returning(*_SNAPSHOT_COLUMNS)
    ).one_or_none()
    return JobSnapshot(*row) if row is not None else None


_SNAPSHOT_COLUMNS = (
    JOBS.c.id,
    JOBS.c.prompt,
    JOBS.c.params,
    JOBS.c.model,
    JOBS.c.attempts,
    JOBS.c.fal_request_id,
    JOBS.c.created_at,
    JOBS.c.deadline_at,
    JOBS.c.callback_url,
)


def renew_lease(*, session: Session, job_id: uuid.UUID, owner: str, lease_s: float) -> bool:
    """Extend our lease; False when the job was cancelled, finished or taken over."""
    now = utcnow()
    result = session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.lease_owner == owner, JOBS.c.status == JobStatus.RUNNING)
        .values(lease_until=now + timedelta(seconds=lease_s), updated_at=now)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


def release_for_retry(
    *, session: Session, job_id: uuid.UUID, owner: str, retry_at: datetime, grace_s: float
) -> None:
    """Back to ``queued`` while the Celery retry waits; swept if it never comes."""
    session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.lease_owner == owner, JOBS.c.status == JobStatus.RUNNING)
        .values(
            status=JobStatus.QUEUED,
            lease_owner=None,
            lease_until=retry_at + timedelta(seconds=grace_s),
            updated_at=utcnow(),
        )
    )


def park_for_webhook(
    *, session: Session, job_id: uuid.UUID, owner: str, request_id: str, wait_s: float
) -> bool:
    """Hand the job to fal's callback: no run holds it until the webhook or ``wait_s``.

    False when the callback has already arrived: the run reads it instead. (The receiver
    stores the callback, then publishes a run; whichever comes second sees the other.)
    """
    arrived = select(WEBHOOKS.c.request_id).where(WEBHOOKS.c.request_id == request_id).exists()
    result = session.execute(
        update(JOBS)
        .where(
            JOBS.c.id == job_id,
            JOBS.c.lease_owner == owner,
            JOBS.c.status == JobStatus.RUNNING,
            ~arrived,
        )
        .values(
            lease_owner=PARKED_FOR_WEBHOOK,
            lease_until=utcnow() + timedelta(seconds=wait_s),
            updated_at=utcnow(),
        )
    )
    return bool(cast(CursorResult[Any], result).rowcount)


def webhook_body(*, session: Session, request_id: str) -> dict[str, Any] | None:
    """The verified callback fal sent for this request, if it came."""
    return session.execute(
        select(WEBHOOKS.c.body).where(WEBHOOKS.c.request_id == request_id)
    ).scalar_one_or_none()


def record_webhook(
    *, session: Session, request_id: str, body: dict[str, Any], job_hint: uuid.UUID | None
) -> tuple[uuid.UUID | None, bool]:
    """Keep a verified callback (redeliveries are no-ops): the open job it is for, if any,
    and whether this is its first delivery.

    The job is found by its fal request id; the callback URL's ``job_id`` hint covers the
    moment between fal's answer to the submit and the run recording the request id.
    """
    fresh = session.get(FalWebhook, request_id) is None
    if fresh:
        session.execute(
            insert(WEBHOOKS).values(
                request_id=request_id, job_id=job_hint, body=body, received_at=utcnow()
            )
        )
    open_job = JOBS.c.status.in_(_OPEN)
    job_id = session.execute(
        select(JOBS.c.id).where(JOBS.c.fal_request_id == request_id, open_job)
    ).scalar_one_or_none()
    if job_id is None and job_hint is not None:
        job_id = session.execute(
            select(JOBS.c.id).where(
                JOBS.c.id == job_hint, JOBS.c.fal_request_id.is_(None), open_job
            )
        ).scalar_one_or_none()
    return job_id, fresh


def purge_webhooks(*, session: Session, older_than: datetime) -> int:
    result = session.execute(delete(WEBHOOKS).where(WEBHOOKS.c.received_at < older_than))
    return int(cast(CursorResult[Any], result).rowcount)


def begin_attempt(*, session: Session, job_id: uuid.UUID) -> int:
    """Count one submission (before it is sent) and open its attempt row; returns its number."""
    number = session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id)
        .values(attempts=JOBS.c.attempts + 1, updated_at=utcnow())
        .returning(JOBS.c.attempts)
    ).scalar_one()
    session.execute(
        insert(ATTEMPTS).values(
            job_id=job_id, number=number, outcome=AttemptOutcome.SENDING, started_at=utcnow()
        )
    )
    return number


def retract_attempt(*, session: Session, job_id: uuid.UUID, number: int) -> None:
    """The POST never left (connection refused): it is not a submission."""
    session.execute(
        delete(ATTEMPTS).where(ATTEMPTS.c.job_id == job_id, ATTEMPTS.c.number == number)
    )
    session.execute(update(JOBS).where(JOBS.c.id == job_id).values(attempts=JOBS.c.attempts - 1))


def record_submitted(*, session: Session, job_id: uuid.UUID, number: int, request_id: str) -> None:
    _update_attempt(
        session, job_id, number, fal_request_id=request_id, outcome=AttemptOutcome.SUBMITTED
    )
    session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id)
        .values(fal_request_id=request_id, updated_at=utcnow())
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
    session.execute(update(JOBS).where(JOBS.c.id == job_id).values(fal_request_id=None))


def latest_attempt(*, session: Session, job_id: uuid.UUID) -> tuple[int, AttemptOutcome] | None:
    row = session.execute(
        select(ATTEMPTS.c.number, ATTEMPTS.c.outcome)
        .where(ATTEMPTS.c.job_id == job_id)
        .order_by(ATTEMPTS.c.number.desc())
        .limit(1)
    ).one_or_none()
    return (row[0], row[1]) if row is not None else None


def mark_unknown(*, session: Session, job_id: uuid.UUID, number: int) -> None:
    """A previous run died mid-POST: nobody can tell whether fal received it."""
    _update_attempt(
        session,
        job_id,
        number,
        outcome=AttemptOutcome.UNKNOWN,
        finished_at=utcnow(),
        error_type="worker_lost",
        detail={"message": "the worker died while this submit was in flight"},
    )


def finish(*, session: Session, job_id: uuid.UUID, status: JobStatus, **values: Any) -> bool:
    """Move an open job to a terminal status; False if it was already terminal."""
    assert status in TERMINAL_STATUSES
    now = utcnow()
    result = session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.status.in_(_OPEN))
        .values(
            status=status,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_until=None,
            **values,
        )
    )
    return bool(cast(CursorResult[Any], result).rowcount)


def close_attempt(
    *, session: Session, job_id: uuid.UUID, number: int | None, outcome: AttemptOutcome
) -> None:
    if number is not None:
        _update_attempt(session, job_id, number, outcome=outcome, finished_at=utcnow())


def _update_attempt(session: Session, job_id: uuid.UUID, number: int, **values: Any) -> None:
    session.execute(
        update(ATTEMPTS)
        .where(ATTEMPTS.c.job_id == job_id, ATTEMPTS.c.number == number)
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
