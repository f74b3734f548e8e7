"""The sweeper: the job table is the source of truth, Redis only a wake-up signal.

Run by celery beat (``imagegen.sweep``), safe from several processes at once. It
re-publishes what a lost message or a dead task left: ``queued`` past its grace, and
``submitting`` / ``collecting`` whose lease ran out (the stage run again takes the job over:
a submit that died mid-POST falls under the unknown rule, ``worker.jobs.submit``). It
checks once a request at fal with no news past its due time (a dead poller, a lost
webhook), fails jobs past their deadline that no task holds (cancelling them at fal), and
purges stored webhook bodies of terminal jobs. Free fal slots nobody granted (a slot
whose lease ran out) go to waiting jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import Connection, and_, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imagegen.models import JobStatus, utcnow
from imagegen.worker.db import write
from imagegen.worker.errors import FalError
from imagegen.worker.fal import webhook_store
from imagegen.worker.jobs import fairshare, state
from imagegen.worker.jobs.dispatch import heard_completed, send_collect, send_store, send_submit
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.logs import get_logger
from imagegen.worker.settings import Settings

log = get_logger(__name__)
BATCH = 500
J = state.JOBS.c
#: the states a stage task is (to be) working on
STAGED = (JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.COLLECTING, JobStatus.STORING)
DEADLINE_ERROR = "deadline passed before the job could finish (IMAGEGEN_JOB_DEADLINE_S)"


@dataclass
class SweepReport:
    republished: list[uuid.UUID] = field(default_factory=list)
    expired: list[uuid.UUID] = field(default_factory=list)
    checked_at_fal: int = 0
    webhooks_purged: int = 0
    #: free fal slots handed to waiting jobs (``worker.jobs.fairshare``)
    granted: int = 0

    def summary(self) -> str:
        return (
            f"republished {len(self.republished)}, expired {len(self.expired)}, "
            f"checked at fal {self.checked_at_fal}, webhooks purged {self.webhooks_purged}, "
            f"slots granted {self.granted}"
        )


def sweep(settings: Settings, app: Celery) -> SweepReport:
    """One pass."""
    report = SweepReport()
    now = utcnow()
    report.expired = _expire_overdue(settings, app, now)
    report.republished = republish(settings, app, now)
    report.granted = _grant(settings, app)
    report.checked_at_fal = _check_silent(settings, app, now)
    report.webhooks_purged = _purge_webhooks(settings)
    if report.republished or report.expired or report.checked_at_fal or report.granted:
        log.warning("sweep", result=report.summary())
    return report


def sweep_or_skip(settings: Settings, app: Celery) -> SweepReport | None:
    """One pass, as celery beat runs it: while Postgres or the broker is unreachable the
    pass is skipped with one warning line; the next pass does the work."""
    try:
        return sweep(settings, app)
    except (DBAPIError, PoolTimeout, KombuOperationalError) as exc:
        orig = getattr(exc, "orig", None) or exc
        first_line = next(iter(str(orig).strip().splitlines()), "")
        log.warning("sweep.skipped", error=type(exc).__name__, detail=first_line)
        return None


def _lapsed(now: datetime) -> Any:
    return or_(J.lease_until.is_(None), J.lease_until < now)


def republish(
    settings: Settings, app: Celery, now: datetime, statuses: tuple[JobStatus, ...] = STAGED
) -> list[uuid.UUID]:
    """Stages whose message was lost (or whose task died): publish them again, once.

    queued: past its grace; submitting / collecting / storing: its lease ran out (a collect never
    published since COMPLETED was heard has the short lease of ``heard_completed``)."""
    stale = and_(J.status.in_(statuses), _lapsed(now))
    grace = now + timedelta(seconds=max(settings.queued_grace_s, 1.0))

    def work(db: Connection) -> list[Any]:
        query = select(J.id).where(stale).limit(BATCH).with_for_update(skip_locked=True)
        ids = list(db.execute(query).scalars())
        if not ids:
            return []
        # the grace pushed forward: the next pass does not publish them again meanwhile; the
        # dead task's lease is over, so the message published now can take the job
        bump = (
            update(state.JOBS)
            .where(J.id.in_(ids), stale)
            .values(lease_until=grace, lease_owner=None)
        )
        return list(db.execute(bump.returning(J.id, J.status, J.attempts)).all())

    rows = write(settings.database_url, work)
    for job_id, status, attempts in rows:
        if status is JobStatus.COLLECTING:
            send_collect(app, job_id, attempts)
        elif status is JobStatus.STORING:
            send_store(app, job_id, attempts)
        else:
            send_submit(app, job_id, attempts)
    return [row[0] for row in rows]


def _grant(settings: Settings, app: Celery) -> int:
    from imagegen.worker.fal.limits import FalLimiter

    return fairshare.grant(settings, app, FalLimiter.for_settings(settings), always=True)


def _expire_overdue(settings: Settings, app: Celery, now: datetime) -> list[uuid.UUID]:
    """Fail the jobs past their deadline that no task holds, cancelling what fal has."""
    overdue = and_(J.status.in_(state.MOVES["expire"].sources), J.deadline_at < now, _lapsed(now))
    query = select(J.id).where(overdue).limit(BATCH)
    expired: list[uuid.UUID] = []
    while True:  # a backlog after an outage: batches of short transactions, a move each
        ids = write(settings.database_url, lambda db: list(db.execute(query).scalars()))
        for job_id in ids:
            moved = write(settings.database_url, _expire(job_id))
            if moved is None:
                continue
            fire(moved, app)
            if moved.job.fal_request_id is not None:
                _cancel_at_fal(settings, moved.job)
            expired.append(job_id)
        if len(ids) < BATCH:
            return expired


def _check_silent(settings: Settings, app: Celery, now: datetime) -> int:
    """Requests at fal overdue for a check by two sweep intervals: no poller is looking."""
    late = now - timedelta(seconds=2 * settings.sweep_interval_s)
    query = (
        select(J.id, J.model, J.fal_request_id)
        .where(J.status == JobStatus.AT_FAL, J.poll_at < late)
        .limit(BATCH)
    )
    rows = write(settings.database_url, lambda db: list(db.execute(query).all()))
    if not rows:
        return 0
    from imagegen.worker.fal.gateway import FalGateway
    from imagegen.worker.fal.limits import FalLimiter

    gateway, limiter = FalGateway.from_settings(settings), FalLimiter.for_settings(settings)
    try:
        for job_id, model, request_id in rows:
            try:
                done = gateway.status(model, request_id).done
            except FalError as exc:
                log.info("sweep.status_failed", job_id=str(job_id), error=exc.message)
                continue
            if done:
                heard_completed(settings, app, limiter, job_id)
            else:
                again = utcnow() + timedelta(seconds=settings.poll_max_s)
                write(settings.database_url, _reschedule(job_id, again))
    finally:
        gateway.close()
    return len(rows)


def _expire(job_id: uuid.UUID) -> Callable[[Connection], state.Moved | None]:
    return lambda db: state.move(db, job_id, "expire", values={"error": DEADLINE_ERROR})


def _reschedule(job_id: uuid.UUID, at: datetime) -> Callable[[Connection], state.Moved | None]:
    return lambda db: state.move(db, job_id, "reschedule", values={"poll_at": at})


def _purge_webhooks(settings: Settings) -> int:
    purged = 0
    while True:
        n = write(settings.database_url, lambda db: webhook_store.purge_terminal(db, BATCH))
        purged += n
        if n < BATCH:
            return purged


def _cancel_at_fal(settings: Settings, job: state.JobRow) -> None:
    from imagegen.worker.fal.gateway import FalGateway
    from imagegen.worker.fal.limits import FalLimiter

    assert job.fal_request_id is not None
    gateway = FalGateway.from_settings(settings)
    try:
        gateway.cancel(job.model, job.fal_request_id)
    except FalError as exc:
        log.info("fal.cancel_failed", job_id=str(job.id), error=exc.message)
    finally:
        gateway.close()
    FalLimiter.for_settings(settings).release(str(job.id))
