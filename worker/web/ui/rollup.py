"""The overview's windowed figures read from the hourly totals (``models.JobHour``, kept by
the triggers of migration 0015): a few thousand rows whatever the window holds.

Same shapes as the live counts of ``worker.web.ui.figures`` (which SQLite uses, and the
tests compare with).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.orm import Session

from imagegen.models import JobHour, JobStatus, Tenant

_TERMINAL = ("succeeded", "refused", "failed", "cancelled")


def _slot(bucket: str) -> ColumnElement[Any]:
    utc = func.timezone(literal_column("'UTC'"), JobHour.hour)
    return func.date_trunc(literal_column(f"'{bucket}'"), utc).label("slot")


def _mine(since: datetime, tenant_id: uuid.UUID | None) -> list[Any]:
    where: list[Any] = [JobHour.hour >= since]
    if tenant_id is not None:
        where.append(JobHour.tenant_id == tenant_id)
    return where


def jobs_by_bucket(
    session: Session, since: datetime, bucket: str, tenant_id: uuid.UUID | None
) -> dict[tuple[str, str], int]:
    """(bucket, outcome or ``open``) -> jobs created then (open: created, not yet ended)."""
    slot = _slot(bucket)
    query = (
        select(slot, JobHour.key, func.sum(JobHour.n))
        .where(*_mine(since, tenant_id), JobHour.key.in_(("created", *_TERMINAL)))
        .group_by(slot, JobHour.key)
    )
    found: dict[tuple[str, str], int] = {}
    for when, key, n in session.execute(query).all():
        stamp = when.strftime("%Y-%m-%d %H")
        found[(stamp, key)] = found.get((stamp, key), 0) + int(n)
    for stamp, key in [k for k in found if k[1] == "created"]:
        ended = sum(found.get((stamp, s), 0) for s in _TERMINAL)
        found[(stamp, "open")] = found.pop((stamp, key)) - ended
    return {k: n for k, n in found.items() if n}


def refusals_by_bucket(
    session: Session, since: datetime, bucket: str, tenant_id: uuid.UUID | None
) -> list[tuple[str, str, str, int]]:
    """(bucket, category, source, refused jobs)."""
    slot = _slot(bucket)
    query = (
        select(slot, JobHour.refusal_category, JobHour.refusal_source, func.sum(JobHour.n))
        .where(*_mine(since, tenant_id), JobHour.key == JobStatus.REFUSED.value)
        .group_by(slot, JobHour.refusal_category, JobHour.refusal_source)
        .having(func.sum(JobHour.n) != 0)
    )
    return [
        (when.strftime("%Y-%m-%d %H"), category or "unspecified", source or "fal", int(n))
        for when, category, source, n in session.execute(query).all()
    ]


def spend(session: Session, since: datetime, tenant_id: uuid.UUID | None) -> list[dict[str, Any]]:
    """``worker.jobs.tenant_stats``'s lines (without refusals by category), from the totals."""
    created = JobHour.key == "created"
    refused = JobHour.key == JobStatus.REFUSED.value
    query = (
        select(
            Tenant.name,
            func.sum(JobHour.n).filter(created),
            func.coalesce(func.sum(JobHour.n).filter(refused), 0),
            func.sum(JobHour.billed_usd).filter(created),
            func.sum(JobHour.upper_usd).filter(created),
            func.sum(JobHour.possibly_billed).filter(created),
        )
        .join(Tenant, Tenant.id == JobHour.tenant_id)
        .where(*_mine(since, tenant_id))
        .group_by(Tenant.name)
        .order_by(Tenant.name)
    )
    return [
        {
            "tenant": name,
            "jobs": int(jobs),
            "refused": int(refused_n),
            "billed_usd": _money(billed),
            "spend_upper_bound_usd": _money(upper),
            "possibly_billed": int(possibly),
        }
        for name, jobs, refused_n, billed, upper, possibly in session.execute(query).all()
        if jobs
    ]


def _money(value: Any) -> str:
    return str(Decimal(value or 0).quantize(Decimal("0.000001")))
