"""The fair share of the fleet cap: who gets a fal slot that frees while jobs wait for one.

A submit that finds the fleet at its cap (IMAGEGEN_FAL_CONCURRENCY) parks its job
``waiting`` (no broker message, no slot) and sets the limiter's waiting flag, so later
submits wait too instead of racing for freed slots in message order. ``grant`` hands the
free slots out: to the tenant with waiting jobs that holds the fewest slots for its weight
(held / weight, the furthest below its share; ties: the tenant whose oldest waiting job
is oldest), keeping a slot for that tenant's oldest waiting job (token: the job id),
moving it waiting -> queued and publishing its submit, which the admission lets through.
IMAGEGEN_FAIR_SHARE=false: the oldest waiting job of any tenant (plain FIFO).

Held: a tenant's jobs submitting or at fal, and queued ones granted a slot within a lease.
Whoever frees a slot calls ``grant`` (the poller hearing COMPLETED, a submit that ends
short of fal, the sweeper) and the poller's housekeeping every second. One granter at a
time fleet-wide (a transaction-level advisory lock). Nothing is lost to a crash: a slot
kept for a submit that never runs expires with its lease, a granted job is queued and
republished after its grace, and a flag that lapsed with jobs waiting is set again here.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Connection, Select, Table, and_, exists, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from imagegen.models import JobStatus, Tenant, utcnow
from imagegen.worker.db import write
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.jobs import state
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.logs import get_logger
from imagegen.worker.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from imagegen.worker.settings import Settings

log = get_logger(__name__)
J = state.JOBS.c
TENANTS: Table = Tenant.__table__  # type: ignore[assignment]
#: what counts as holding a slot (queued: only if granted one within a lease)
HOLDING = (JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.AT_FAL)
#: the waiting flag outlives the last grant by this much (the housekeeping renews it)
WAITING_FLAG_S = 5.0
#: one call grants at most this many slots (the rest on the next call)
MAX_GRANTS = 200
_LOCK_ID = 0x1A6E_F5A1  # pg_advisory_xact_lock: one granter at a time


def arrivals_wait(settings: Settings, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Enqueue: while jobs wait for a slot, new rows are written ``waiting`` (no message:
    the granter picks them, fairly, rather than after every message queued before them).
    Returns the rows that still need a submit message."""
    if not rows or settings.fal_concurrency is None or not settings.redis_url.startswith("redis"):
        return rows
    try:
        waiting = FalLimiter.for_settings(settings).anyone_waiting()
    except REDIS_UNAVAILABLE:  # the publish that follows will say the broker is away
        return rows
    if not waiting:
        return rows
    for row in rows:
        row.update(status=JobStatus.WAITING, lease_until=None)
    return []


def park(db: Connection, job_id: uuid.UUID, owner: str) -> state.Moved | None:
    """submitting -> waiting: the fleet is at its cap (the caller then calls ``waiting``)."""
    return state.move(db, job_id, "wait", owner=owner, values={"lease_until": None})


def waiting(settings: Settings, app: Celery, limiter: FalLimiter) -> int:
    """After a park: set the flag, and grant if nobody had (a slot may have freed meanwhile;
    with the flag set, whoever frees one grants it, and the housekeeping every second)."""
    if not limiter.mark_waiting(WAITING_FLAG_S):
        return 0
    return grant(settings, app, limiter)


def grant(settings: Settings, app: Celery, limiter: FalLimiter, *, always: bool = False) -> int:
    """Hand the free slots to waiting jobs; how many were granted. Without the waiting flag
    nothing waits (one Redis read) unless ``always`` (the housekeeping: a flag that lapsed)."""
    if limiter.limit is None:
        return 0
    try:
        if not (always or limiter.anyone_waiting()):
            return 0
        return _grant(settings, app, limiter)
    except REDIS_UNAVAILABLE as exc:  # the housekeeping grants again once Redis is back
        log.warning("fleet.grant_skipped", error=str(exc))
        return 0


def _grant(settings: Settings, app: Celery, limiter: FalLimiter) -> int:
    granted = 0
    while granted < MAX_GRANTS:
        moved, left = write(settings.database_url, lambda db: _grant_one(db, settings, limiter))
        if moved is None:
            if left:
                limiter.mark_waiting(WAITING_FLAG_S)
            else:
                limiter.clear_waiting()
            return granted
        granted += 1
        fire(moved, app)
        _publish(app, moved.job)
    limiter.mark_waiting(WAITING_FLAG_S)
    return granted


def _grant_one(
    db: Connection, settings: Settings, limiter: FalLimiter
) -> tuple[state.Moved | None, bool]:
    """One slot to one waiting job, in one transaction: (its move, or None; any left?)."""
    if db.dialect.name == "postgresql":
        db.execute(select(func.pg_advisory_xact_lock(_LOCK_ID)))
    now = utcnow()
    job_id = _next_job(db, settings, now)
    if job_id is None:
        return None, False
    if not limiter.try_acquire(str(job_id)):  # the fleet is at its cap: jobs still wait
        return None, True
    until = now + timedelta(seconds=settings.queued_grace_s)
    values = {"slot_granted_at": now, "lease_until": until}
    moved = state.move(db, job_id, "grant", values=values, now=now)
    if moved is None:  # cancelled meanwhile: its slot back, another job next time
        limiter.release(str(job_id))
        return None, True
    return moved, True


def _next_job(db: Connection, settings: Settings, now: datetime) -> uuid.UUID | None:
    query = select(J.id).where(J.status == JobStatus.WAITING)
    if settings.fair_share:
        since = now - timedelta(seconds=settings.lease_s)
        tenant = db.execute(_furthest_below_share(since)).scalar()
        if tenant is None:
            return None
        query = query.where(J.tenant_id == tenant)
    query = query.order_by(J.created_at).limit(1).with_for_update(skip_locked=True)
    return db.execute(query).scalar()


def holds_slot(jobs: Any, since: datetime) -> ColumnElement[bool]:
    """A row of ``jobs`` (the table or an alias) holds a fleet slot: submitting or at fal,
    or queued with a slot granted after ``since`` (a lease ago)."""
    return and_(
        jobs.c.status.in_(HOLDING),
        or_(jobs.c.status != JobStatus.QUEUED, jobs.c.slot_granted_at > since),
    )


def _furthest_below_share(since: datetime) -> Select[tuple[uuid.UUID]]:
    """The tenant with waiting jobs holding the fewest slots for its weight."""
    tenants, waiting, holding = TENANTS.c, state.JOBS.alias("w"), state.JOBS.alias("h")
    its_waiting = and_(waiting.c.tenant_id == tenants.id, waiting.c.status == JobStatus.WAITING)
    held = (
        select(func.count())
        .select_from(holding)
        .where(holding.c.tenant_id == tenants.id, holds_slot(holding, since))
        .scalar_subquery()
    )
    oldest = select(func.min(waiting.c.created_at)).where(its_waiting).scalar_subquery()
    return (
        select(tenants.id)
        .where(exists().where(its_waiting))
        .order_by(held / tenants.weight, oldest)
        .limit(1)
    )


def _publish(app: Celery, job: state.JobRow) -> None:
    from imagegen.worker.jobs.dispatch import send_submit

    try:
        send_submit(app, job.id, job.attempts, granted=True)
    except Exception as exc:  # the broker is away: republished after its grace
        log.warning("submit.not_published", job_id=str(job.id), error=str(exc))
