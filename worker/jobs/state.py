"""The job row as a state machine: its states, the allowed moves, one guarded UPDATE each.

``MOVES`` is the whole machine. ``move`` runs one of them as a single conditional UPDATE
(on the current state and, where a task holds the job, on its lease) and returns the row
as it is afterwards, or None when the guard did not hold (someone else moved the job
first: a cancel, the poller, the sweeper). Listeners (metrics, logs, callbacks) hang off
moves in ``worker.jobs.hooks``; nothing here knows about them.

    queued ─claim─▶ submitting ─submitted─▶ at_fal ─completed─▶ collecting ─collected─▶ storing
     ▲ ▲               │ │└─ refuse / fail                         │   └─ refuse / fail   │
     │ └── requeue ────┴─┼────────────── requeue (fal lost it) ────┘        succeed ◀─────┘
     └─ grant ─ waiting ◀┘ wait (the fleet is at its cap: a freed slot is granted fairly)
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from imagegen.models import TERMINAL_STATUSES, Job, JobStatus, UTCDateTime, utcnow

JOBS: Table = Job.__table__  # type: ignore[assignment]
S = JobStatus
#: more writes for a move's transaction (an attempt row, a stored webhook body)
Also = Callable[[Connection], object]


class Guard(enum.Enum):
    """What a move checks beyond the job's current state."""

    NONE = "none"  # the state alone (a cancel, the poller's moves on at_fal)
    OWNER = "owner"  # the caller holds the job's lease
    FREE = "free"  # nobody holds a live lease (queued, or a lease that ran out)


@dataclass(frozen=True)
class Move:
    name: str
    sources: tuple[JobStatus, ...]
    target: JobStatus
    guard: Guard
    #: the move takes a lease for the caller (lease_owner, lease_until)
    leases: bool = False


_OPEN = (S.QUEUED, S.WAITING, S.SUBMITTING, S.AT_FAL, S.COLLECTING)
_HELD = (S.SUBMITTING, S.COLLECTING)

#: every allowed transition; nothing writes ``jobs.status`` but ``move``
MOVES: dict[str, Move] = {
    m.name: m
    for m in (
        # submit task: take the job (a submit whose task died is taken over after its lease)
        Move("claim", (S.QUEUED, S.SUBMITTING), S.SUBMITTING, Guard.FREE, leases=True),
        Move("submitted", (S.SUBMITTING,), S.AT_FAL, Guard.OWNER),
        # back in the queue: a transient error, or fal's request failed
        Move("requeue", _HELD, S.QUEUED, Guard.OWNER),
        # the fleet is at its cap: no message, no slot, until a freed slot is granted to it
        Move("wait", (S.SUBMITTING,), S.WAITING, Guard.OWNER),
        Move("grant", (S.WAITING,), S.QUEUED, Guard.NONE),
        # the poller, fal's webhook or the sweeper heard COMPLETED (exactly one wins)
        Move("completed", (S.AT_FAL,), S.COLLECTING, Guard.NONE),
        Move("reschedule", (S.AT_FAL,), S.AT_FAL, Guard.NONE),
        # collect task: take the job (again, after a collect whose task died)
        Move("collect", (S.COLLECTING,), S.COLLECTING, Guard.FREE, leases=True),
        Move("release", (S.COLLECTING,), S.COLLECTING, Guard.OWNER),
        # fal answered with images: the store stage copies them (IMAGEGEN_STORE_IMAGES)
        Move("collected", (S.COLLECTING,), S.STORING, Guard.OWNER),
        Move("store", (S.STORING,), S.STORING, Guard.FREE, leases=True),
        Move("store_later", (S.STORING,), S.STORING, Guard.OWNER),
        # stored (or the copy gave up: images_stored false, fal's URLs kept); never fails
        Move("succeed", (S.COLLECTING, S.STORING), S.SUCCEEDED, Guard.OWNER),
        Move("refuse", _HELD, S.REFUSED, Guard.OWNER),
        Move("fail", _HELD, S.FAILED, Guard.OWNER),
        # no task holds it: the poller (deadline at fal) or the sweeper (expired)
        Move("expire", _OPEN, S.FAILED, Guard.FREE),
        Move("fail_at_fal", (S.AT_FAL,), S.FAILED, Guard.NONE),
        Move("cancel", _OPEN, S.CANCELLED, Guard.NONE),
    )
}

#: what a move returns: the row as it is afterwards
RETURNED = (
    JOBS.c.id,
    JOBS.c.status,
    JOBS.c.prompt,
    JOBS.c.params,
    JOBS.c.model,
    JOBS.c.attempts,
    JOBS.c.fal_request_id,
    JOBS.c.submitted_at,
    JOBS.c.deadline_at,
    JOBS.c.callback_url,
    JOBS.c.refusal_category,
    JOBS.c.refusal_source,
    JOBS.c.error,
    JOBS.c.images_stored,
    JOBS.c.inputs,
    JOBS.c.tenant_id,
    JOBS.c.billed_cost_usd,
    JOBS.c.end_user,
)


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    status: JobStatus
    prompt: str
    params: dict[str, Any]
    model: str
    attempts: int
    fal_request_id: str | None
    submitted_at: datetime | None
    deadline_at: datetime | None
    callback_url: str | None
    refusal_category: str | None
    refusal_source: str | None
    error: str | None
    #: set by the store stage's succeed (None: the job never went through storing)
    images_stored: bool | None = None
    #: an edit job's stored input images (``worker.media.inputs``)
    inputs: list[dict[str, Any]] | None = None
    tenant_id: uuid.UUID | None = None
    #: what fal billed for it, where known (``worker.cost.record``)
    billed_cost_usd: Decimal | None = None
    end_user: str | None = None

    @property
    def overdue(self) -> bool:
        return self.deadline_at is not None and utcnow() >= self.deadline_at


@dataclass(frozen=True)
class Moved:
    """A move that happened: what ``worker.jobs.hooks`` listeners are told."""

    move: Move
    job: JobRow
    at: datetime


_NOW = bindparam("now", type_=UTCDateTime())


def _guard(move: Move) -> ColumnElement[bool]:
    source = or_(*(JOBS.c.status == status for status in move.sources))
    if move.guard is Guard.OWNER:
        return and_(source, JOBS.c.lease_owner == bindparam("owner"))
    if move.guard is Guard.FREE:
        free = or_(
            JOBS.c.status == S.QUEUED,
            JOBS.c.lease_owner.is_(None),
            JOBS.c.lease_until.is_(None),
            JOBS.c.lease_until < _NOW,
        )
        return and_(source, free)
    return source


@lru_cache(maxsize=256)
def _statement(name: str, columns: frozenset[str]) -> Any:
    move = MOVES[name]
    values: dict[str, Any] = {"status": move.target, "updated_at": _NOW}
    if move.leases:
        values.update(
            lease_owner=bindparam("owner"),
            lease_until=bindparam("until", type_=UTCDateTime()),
            started_at=func.coalesce(JOBS.c.started_at, _NOW),
        )
    elif move.target is not move.sources[0] or move.guard is Guard.OWNER:
        values.update(lease_owner=None)
    if move.target in TERMINAL_STATUSES:
        values.update(finished_at=_NOW, lease_until=None, poll_at=None)
    values.update({column: bindparam(f"v_{column}") for column in sorted(columns)})
    return (
        update(JOBS)
        .where(JOBS.c.id == bindparam("jid"), _guard(MOVES[name]))
        .values(**values)
        .returning(*RETURNED)
    )


def move(
    db: Connection,
    job_id: uuid.UUID,
    name: str,
    *,
    owner: str | None = None,
    lease_s: float | None = None,
    values: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Moved | None:
    """Run the move ``name`` on the job; None when its guard did not hold.

    ``values``: other columns to set (``error``, ``images``, ``poll_at``, ...). A move that
    takes a lease needs ``owner`` and ``lease_s``; an OWNER-guarded one needs ``owner``.
    """
    spec = MOVES[name]
    now = now or utcnow()
    params: dict[str, Any] = {"jid": job_id, "now": now}
    if spec.leases or spec.guard is Guard.OWNER:
        if owner is None:
            raise ValueError(f"move {name!r} needs the lease owner")
        params["owner"] = owner
    if spec.leases:
        if lease_s is None:
            raise ValueError(f"move {name!r} needs lease_s")
        params["until"] = now + timedelta(seconds=lease_s)
    values = dict(values or {})
    if "status" in values:
        raise ValueError("status changes only through a move")
    params.update({f"v_{column}": value for column, value in values.items()})
    row = db.execute(_statement(name, frozenset(values)), params).one_or_none()
    return Moved(spec, JobRow(*row), now) if row is not None else None


def status_of(database_url: str, job_id: uuid.UUID) -> JobStatus | None:
    """The job's status now (None: no such job)."""
    from imagegen.worker.db import write

    query = select(JOBS.c.status).where(JOBS.c.id == job_id)
    return write(database_url, lambda db: db.execute(query).scalar_one_or_none())


def allowed(source: JobStatus, target: JobStatus) -> bool:
    """Is there a move from ``source`` to ``target``? (for docs and tests)"""
    return any(source in m.sources and m.target is target for m in MOVES.values())
