"""The sweeper: the job table is the source of truth, Redis only a wake-up signal.

It re-publishes jobs whose broker message was lost: ``queued`` past their grace (Redis
restarted without persistence, a publish that never arrived, a retry that never came) and
``running`` whose lease expired (the worker died). It never makes two runs of one job work
at the same time: a run needs the job's lease (``worker.store.claim``). It also fails jobs
past their deadline that no run is working on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from models import OPEN_STATUSES, Job, JobStatus, utcnow
from worker.constants import CALLBACK_TASK, RUN_JOB_TASK
from worker.db import session_scope
from worker.logs import get_logger
from worker.settings import Settings

log = get_logger(__name__)
BATCH = 500


@dataclass
class SweepReport:
    republished: list[uuid.UUID] = field(default_factory=list)
    expired: list[uuid.UUID] = field(default_factory=list)


def sweep(settings: Settings, app: Celery) -> SweepReport:
    """One pass; safe to run from several processes at once."""
    report = SweepReport()
    now = utcnow()
    expired = _expire_overdue(settings, now)
    report.expired = [job_id for job_id, _ in expired]
    with session_scope(settings.database_url) as session:
        stale = select(Job.id).where(
            Job.status.in_(OPEN_STATUSES),
            or_(Job.lease_until.is_(None), Job.lease_until < now),
        )
        ids = list(session.execute(stale.limit(BATCH).with_for_update(skip_locked=True)).scalars())
        if ids:
            # Requeue them and push their grace forward, so that a second sweeper (or the
            # next pass) does not publish them again before this message had a chance.
            report.republished = list(
                session.execute(
                    update(Job)
                    .where(Job.id.in_(ids), or_(Job.lease_until.is_(None), Job.lease_until < now))
                    .values(
                        status=JobStatus.QUEUED,
                        lease_owner=None,
                        lease_until=now + timedelta(seconds=max(settings.queued_grace_s, 1.0)),
                        updated_at=now,
                    )
                    .returning(Job.id)
                ).scalars()
            )
    for job_id in report.republished:
        app.send_task(RUN_JOB_TASK, args=[str(job_id)], task_id=str(job_id))
    for job_id, callback_url in expired:
        if callback_url is not None:
            app.send_task(CALLBACK_TASK, args=[str(job_id)])
    if report.republished or report.expired:
        log.warning("sweep", republished=len(report.republished), expired=len(report.expired))
    return report


def sweep_or_skip(settings: Settings, app: Celery) -> SweepReport | None:
    """One pass, as celery beat runs it: while Postgres or the broker is unreachable (a
    restart, terminated connections) the pass is skipped with one warning line. The pool
    drops broken connections as it finds them, and the next pass does the work: a job
    this one could not publish is still past its grace then."""
    try:
        return sweep(settings, app)
    except (DBAPIError, PoolTimeout, KombuOperationalError) as exc:
        orig = getattr(exc, "orig", None) or exc
        first_line = next(iter(str(orig).strip().splitlines()), "")
        log.warning("sweep.skipped", error=type(exc).__name__, detail=first_line)
        return None


def _expire_overdue(settings: Settings, now: datetime) -> list[tuple[uuid.UUID, str | None]]:
    """Fail the jobs past their deadline that no run is working on, BATCH a transaction.

    After an outage the backlog can be large; short transactions keep row locks (and the
    work of the stats triggers, see migration 0006) small, and skip rows a run holds.
    """
    overdue = (
        Job.status.in_(OPEN_STATUSES),
        Job.deadline_at < now,
        or_(Job.lease_until.is_(None), Job.lease_until < now),
    )
    expired: list[tuple[uuid.UUID, str | None]] = []
    while True:
        # The ids first, then the update (as for the republished jobs below): a LIMIT ...
        # FOR UPDATE SKIP LOCKED subquery inside the UPDATE may run again and take more.
        batch = select(Job.id).where(*overdue).limit(BATCH).with_for_update(skip_locked=True)
        with session_scope(settings.database_url) as session:
            ids = list(session.execute(batch).scalars())
            if not ids:
                return expired
            rows = session.execute(
                update(Job)
                .where(Job.id.in_(ids), *overdue)
                .values(
                    status=JobStatus.FAILED,
                    error="deadline passed before the job could finish (IMAGEGEN_JOB_DEADLINE_S)",
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_until=None,
                )
                .returning(Job.id, Job.callback_url)
            ).all()
        expired.extend((job_id, callback_url) for job_id, callback_url in rows)
        if len(rows) < BATCH:
            return expired
