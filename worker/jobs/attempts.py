"""The attempt rows: one per submit POST that left, written before it leaves.

``jobs.attempts`` counts them (what IMAGEGEN_MAX_ATTEMPTS caps); a row is ``sending`` while
its POST is out, ``submitted`` once fal named the request, then closed with its outcome.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from imagegen.models import AttemptOutcome, Job, JobAttempt, utcnow
from imagegen.worker.errors import FalError, PolicyRefusal

JOBS: Table = Job.__table__  # type: ignore[assignment]
ATTEMPTS: Table = JobAttempt.__table__  # type: ignore[assignment]
_ONE = (ATTEMPTS.c.job_id == bindparam("jid")) & (ATTEMPTS.c.number == bindparam("num"))
_COUNT = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("jid"))
    .values(attempts=JOBS.c.attempts + 1)
    .returning(JOBS.c.attempts)
)
_LATEST = (
    select(ATTEMPTS.c.number, ATTEMPTS.c.outcome)
    .where(ATTEMPTS.c.job_id == bindparam("jid"))
    .order_by(ATTEMPTS.c.number.desc())
    .limit(1)
)


def begin(db: Connection, job_id: uuid.UUID) -> int:
    """Count one submission (before it is sent) and open its row; returns its number."""
    number = int(db.execute(_COUNT, {"jid": job_id}).scalar_one())
    db.execute(
        insert(ATTEMPTS).values(
            job_id=job_id, number=number, outcome=AttemptOutcome.SENDING, started_at=utcnow()
        )
    )
    return number


def retract(db: Connection, job_id: uuid.UUID, number: int) -> None:
    """The POST never left (the connection could not be opened): not a submission."""
    db.execute(delete(ATTEMPTS).where(_ONE), {"jid": job_id, "num": number})
    db.execute(update(JOBS).where(JOBS.c.id == job_id).values(attempts=JOBS.c.attempts - 1))


def submitted(db: Connection, job_id: uuid.UUID, number: int, request_id: str) -> None:
    db.execute(
        update(ATTEMPTS)
        .where(_ONE)
        .values(fal_request_id=request_id, outcome=AttemptOutcome.SUBMITTED),
        {"jid": job_id, "num": number},
    )


def latest(db: Connection, job_id: uuid.UUID) -> tuple[int, AttemptOutcome] | None:
    row = db.execute(_LATEST, {"jid": job_id}).one_or_none()
    return (row[0], row[1]) if row is not None else None


def close(
    db: Connection,
    job_id: uuid.UUID,
    number: int,
    outcome: AttemptOutcome,
    error: FalError | None = None,
    **values: Any,
) -> None:
    """Close the attempt with its outcome (and what fal said, for an error)."""
    if error is not None:
        values.update(
            http_status=error.http_status,
            error_type=error.error_type or type(error).__name__,
            detail=_jsonable(error),
        )
    db.execute(
        update(ATTEMPTS).where(_ONE).values(outcome=outcome, finished_at=utcnow(), **values),
        {"jid": job_id, "num": number},
    )


def outcome_of(error: FalError) -> AttemptOutcome:
    if isinstance(error, PolicyRefusal):
        return AttemptOutcome.REFUSED
    return AttemptOutcome.TRANSIENT if error.retryable else AttemptOutcome.PERMANENT


def _jsonable(error: FalError) -> Any:
    base = {"message": error.message}
    detail = error.detail
    if detail is None:
        return base
    if isinstance(detail, dict | list | str | int | float | bool):
        return {**base, "fal": detail}
    return {**base, "fal": repr(detail)}
