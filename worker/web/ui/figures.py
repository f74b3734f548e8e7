"""The overview's figures, each one query over a window (the last 24 h, 7 or 30 days).

On Postgres the windowed counts and spend come from the hourly totals that triggers keep
(``worker.web.ui.rollup``, migration 0015), so a page costs a few thousand rows whatever the
window holds; elsewhere (SQLite, the demo) the jobs of the window are counted. Time at fal
is over the last 2,000 completed submissions (the attempts' primary key, newest first).
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.orm import Session

from imagegen.models import (
    IN_PROGRESS_STATUSES,
    OPEN_STATUSES,
    AttemptOutcome,
    Job,
    JobAttempt,
    JobStatus,
    utcnow,
)
from imagegen.worker.jobs.tenant_stats import tenant_stats

from . import rollup


@dataclass(frozen=True)
class Window:
    name: str
    span: timedelta
    bucket: str  # hour or day

    def starts(self, now: datetime) -> list[datetime]:
        """Each bucket's start, oldest first (the current one last)."""
        step = timedelta(hours=1) if self.bucket == "hour" else timedelta(days=1)
        if self.bucket == "hour":
            last = now.replace(minute=0, second=0, microsecond=0)
        else:
            last = now.replace(hour=0, minute=0, second=0, microsecond=0)
        count = int(self.span / step)
        return [last - step * i for i in range(count - 1, -1, -1)]


WINDOWS = {
    "24h": Window("24h", timedelta(hours=24), "hour"),
    "7d": Window("7d", timedelta(days=7), "day"),
    "30d": Window("30d", timedelta(days=30), "day"),
}
LATENCY_SAMPLE = 2000


def _bucket(session: Session, bucket: str) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        # in UTC whatever the session's TimeZone, as the buckets' labels are
        utc = func.timezone(literal_column("'UTC'"), Job.created_at)
        return func.date_trunc(literal_column(f"'{bucket}'"), utc)
    pattern = "%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00"
    return func.strftime(pattern, Job.created_at)


def _key(value: Any) -> str:
    """A bucket as the dialect returned it (a datetime or SQLite's text), comparable."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H")
    return str(value)[:13]


def _mine(tenant_id: uuid.UUID | None) -> list[Any]:
    return [] if tenant_id is None else [Job.tenant_id == tenant_id]


def _kept(session: Session) -> bool:
    """The hourly totals of migration 0015 are kept on Postgres only."""
    return session.get_bind().dialect.name == "postgresql"


def jobs_by_bucket(
    session: Session, since: datetime, bucket: str, tenant_id: uuid.UUID | None
) -> dict[tuple[str, str], int]:
    """(bucket, terminal status or ``open``) -> jobs created then."""
    if _kept(session):
        return rollup.jobs_by_bucket(session, since, bucket, tenant_id)
    return live_jobs_by_bucket(session, since, bucket, tenant_id)


def live_jobs_by_bucket(
    session: Session, since: datetime, bucket: str, tenant_id: uuid.UUID | None
) -> dict[tuple[str, str], int]:
    slot = _bucket(session, bucket).label("slot")
    query = (
        select(slot, Job.status, func.count())
        .where(Job.created_at >= since, *_mine(tenant_id))
        .group_by(slot, Job.status)
    )
    found: dict[tuple[str, str], int] = {}
    for when, status, n in session.execute(query).all():
        key = (_key(when), status.value if status.terminal else "open")
        found[key] = found.get(key, 0) + n
    return found


def refusals_by_bucket(
    session: Session, since: datetime, bucket: str, tenant_id: uuid.UUID | None
) -> list[tuple[str, str, str, int]]:
    """(bucket, category, source, refused jobs)."""
    if _kept(session):
        return rollup.refusals_by_bucket(session, since, bucket, tenant_id)
    return live_refusals_by_bucket(session, since, bucket, tenant_id)


def live_refusals_by_bucket(
    session: Session, since: datetime, bucket: str, tenant_id: uuid.UUID | None
) -> list[tuple[str, str, str, int]]:
    slot = _bucket(session, bucket).label("slot")
    query = (
        select(slot, Job.refusal_category, Job.refusal_source, func.count())
        .where(Job.status == JobStatus.REFUSED, Job.created_at >= since, *_mine(tenant_id))
        .group_by(slot, Job.refusal_category, Job.refusal_source)
    )
    return [
        (_key(b), category or "unspecified", source or "fal", n)
        for b, category, source, n in session.execute(query).all()
    ]


def spend(session: Session, since: datetime, tenant_id: uuid.UUID | None) -> list[dict[str, Any]]:
    """Jobs, refusals and spend per tenant of the jobs created since ``since``."""
    if _kept(session):
        return rollup.spend(session, since, tenant_id)
    return tenant_stats(session, since=since, tenant_id=tenant_id)


def open_counts(session: Session, tenant_id: uuid.UUID | None) -> dict[str, int]:
    """Jobs queued and at fal now (few: served by the (status, created_at) index)."""
    query = (
        select(Job.status, func.count())
        .where(Job.status.in_(OPEN_STATUSES), *_mine(tenant_id))
        .group_by(Job.status)
    )
    found = {status: n for status, n in session.execute(query).all()}
    return {
        "queued": found.get(JobStatus.QUEUED, 0),
        "waiting": found.get(JobStatus.WAITING, 0),  # for a slot of the fleet cap
        "in_flight": sum(found.get(s, 0) for s in IN_PROGRESS_STATUSES),
        "storing": found.get(JobStatus.STORING, 0),
    }


def fal_latency(session: Session, tenant_id: uuid.UUID | None) -> dict[str, Any]:
    """p50/p95 seconds from submit to fal's answer, of the last completed submissions."""
    query = (
        select(JobAttempt.started_at, JobAttempt.finished_at)
        .where(JobAttempt.outcome == AttemptOutcome.SUCCEEDED, JobAttempt.finished_at.is_not(None))
        .order_by(JobAttempt.id.desc())
        .limit(LATENCY_SAMPLE)
    )
    if tenant_id is not None:
        query = query.join(Job, Job.id == JobAttempt.job_id).where(Job.tenant_id == tenant_id)
    took = sorted(
        max(0.0, (end - start).total_seconds())
        for start, end in session.execute(query).all()
        if end is not None
    )
    if not took:
        return {"count": 0, "p50_s": None, "p95_s": None}
    if len(took) == 1:
        return {"count": 1, "p50_s": took[0], "p95_s": took[0]}
    cuts = statistics.quantiles(took, n=20, method="inclusive")
    return {"count": len(took), "p50_s": statistics.median(took), "p95_s": cuts[18]}


def now() -> datetime:
    return utcnow()
