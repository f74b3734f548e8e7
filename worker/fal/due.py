"""The poller's reads and writes of the job table: due requests, their next check, deadlines.

Several pollers share the table: a due row is taken ``FOR UPDATE SKIP LOCKED`` and its
``poll_at`` pushed past a claim window in the same transaction, so another poller takes it
only if this one has not planned its next check by then (it died). ``poll_at`` is the
poller's own bookkeeping, not a status: it is written here with plain UPDATEs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, bindparam, func, select, update

from imagegen.models import Job, JobStatus, UTCDateTime
from imagegen.worker.jobs import state

JOBS: Table = Job.__table__  # type: ignore[assignment]  # a Table: declared with one
#: how many queued jobs past their deadline one pass fails
EXPIRE_BATCH = 200
DEADLINE_ERROR = "deadline passed before the job could finish (IMAGEGEN_JOB_DEADLINE_S)"


@dataclass(frozen=True)
class Due:
    """A request at fal whose check is due."""

    id: uuid.UUID
    model: str
    fal_request_id: str | None
    submitted_at: datetime | None
    deadline_at: datetime | None
    attempts: int
    #: when this check was planned for (before the claim pushed it on)
    poll_at: datetime

    @property
    def since(self) -> datetime:
        """What the check times count from: the submit (the planned check if unknown)."""
        return self.submitted_at or self.poll_at

    def overdue(self, now: datetime) -> bool:
        return self.deadline_at is not None and self.deadline_at <= now

    def give_up(self, now: datetime, generation_timeout_s: float) -> str | None:
        """Why to stop waiting for this request (its error), or None."""
        if self.overdue(now):
            return DEADLINE_ERROR
        since = self.submitted_at
        if since is not None and (now - since).total_seconds() > generation_timeout_s:
            limit = f"{generation_timeout_s:g}s (IMAGEGEN_GENERATION_TIMEOUT_S)"
            return f"fal did not finish within {limit}"
        return None


def claim(db: Connection, now: datetime, limit: int, claim_s: float) -> list[Due]:
    """Take up to ``limit`` due rows for ``claim_s`` seconds (the earliest first)."""
    due = db.execute(
        select(
            JOBS.c.id,
            JOBS.c.model,
            JOBS.c.fal_request_id,
            JOBS.c.submitted_at,
            JOBS.c.deadline_at,
            JOBS.c.attempts,
            JOBS.c.poll_at,
        )
        .where(JOBS.c.status == JobStatus.AT_FAL, JOBS.c.poll_at <= now)
        .order_by(JOBS.c.poll_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if due:
        until = now + timedelta(seconds=claim_s)
        ids = [row.id for row in due]
        db.execute(update(JOBS).where(JOBS.c.id.in_(ids)).values(poll_at=until))
    return [Due(*row) for row in due]


_RESCHEDULE = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("b_id"), JOBS.c.status == JobStatus.AT_FAL)
    .values(poll_at=bindparam("b_poll_at", type_=UTCDateTime()))
)


def reschedule(db: Connection, plans: list[tuple[uuid.UUID, datetime]]) -> None:
    """Set each job's next check (jobs no longer at fal are left alone)."""
    if plans:
        db.execute(_RESCHEDULE, [{"b_id": job_id, "b_poll_at": at} for job_id, at in plans])


def fail_at_fal(db: Connection, job_id: uuid.UUID, error: str) -> state.Moved | None:
    return state.move(db, job_id, "fail_at_fal", values={"error": error})


def expire_queued(db: Connection, now: datetime) -> list[state.Moved]:
    """Fail the queued (or waiting) jobs whose deadline passed before a submit took them."""
    ids = db.execute(
        select(JOBS.c.id)
        .where(JOBS.c.status.in_((JobStatus.QUEUED, JobStatus.WAITING)), JOBS.c.deadline_at < now)
        .limit(EXPIRE_BATCH)
        .with_for_update(skip_locked=True)
    ).scalars()
    moved = [
        state.move(db, job_id, "expire", values={"error": DEADLINE_ERROR}, now=now)
        for job_id in list(ids)
    ]
    return [m for m in moved if m is not None]


def count_at_fal(db: Connection) -> int:
    query = select(func.count()).select_from(JOBS).where(JOBS.c.status == JobStatus.AT_FAL)
    return int(db.execute(query).scalar_one())
