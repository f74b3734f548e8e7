"""A tenant's quotas, checked at enqueue in the transaction that writes the jobs.

Max jobs in flight (open jobs), max jobs per day, max spend per day and per month (UTC
calendar days and months). Spend counts what fal billed where known and the estimate of
every job that may be billed (queued, at fal, or a submit whose answer was lost): the upper
bound, so a budget is never overrun by jobs already accepted. Over a quota the enqueue is
refused at once (``QuotaExceeded``: HTTP 429 with Retry-After, CLI exit 2) and nothing is
written; a job accepted is never dropped later. The tenant's row is locked while checking,
so concurrent enqueues of one tenant cannot together pass a quota.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from imagegen.models import OPEN_STATUSES, Job, Tenant
from imagegen.worker.errors import QuotaExceeded

#: a job is (or may be) billed: its bill when known, else its estimate unless it never
#: reached fal (a refusal by the pre-filter, a cancel while queued)
_MAY_COST = or_(
    Job.status.in_(OPEN_STATUSES),
    Job.fal_request_id.is_not(None),
    Job.possibly_billed.is_(True),
)
_SPEND = func.coalesce(
    func.sum(
        func.coalesce(Job.billed_cost_usd, case((_MAY_COST, Job.estimated_cost_usd), else_=0))
    ),
    0,
)
#: how long to wait for a slot in flight (a job at fal ends in about a minute)
IN_FLIGHT_RETRY_S = 30


def check_quotas(
    session: Session, tenant_id: uuid.UUID, estimates: Sequence[Decimal | None], now: datetime
) -> None:
    """Raise QuotaExceeded if queuing ``len(estimates)`` more jobs (costing ``estimates``)
    would pass one of the tenant's quotas. Locks the tenant's row until the commit."""
    quotas = (
        Tenant.max_in_flight,
        Tenant.max_jobs_per_day,
        Tenant.max_spend_per_day_usd,
        Tenant.max_spend_per_month_usd,
    )
    limits = session.execute(select(*quotas).where(Tenant.id == tenant_id)).one()
    if all(limit is None for limit in limits):
        return  # no lock: a tenant without quotas never waits for another enqueue
    tenant = session.execute(
        select(Tenant).where(Tenant.id == tenant_id).with_for_update()
    ).scalar_one()
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    adding, cost = len(estimates), sum((e or Decimal(0) for e in estimates), Decimal(0))
    mine = Job.tenant_id == tenant_id
    tomorrow = _until(now, day + timedelta(days=1))
    #: (quota, its limit, what it counts, over which jobs, what this enqueue adds, retry after)
    checks = (
        ("max_in_flight", tenant.max_in_flight, func.count(Job.id),
         Job.status.in_(OPEN_STATUSES), adding, IN_FLIGHT_RETRY_S),
        ("max_jobs_per_day", tenant.max_jobs_per_day, func.count(Job.id),
         Job.created_at >= day, adding, tomorrow),
        ("max_spend_per_day_usd", tenant.max_spend_per_day_usd, _SPEND,
         Job.created_at >= day, cost, tomorrow),
        ("max_spend_per_month_usd", tenant.max_spend_per_month_usd, _SPEND,
         Job.created_at >= month, cost, _until(now, _next_month(month))),
    )  # fmt: skip
    for quota, limit, measure, which, added, retry_after_s in checks:
        if limit is not None:
            current = _scalar(session, measure, mine, which)
            if isinstance(added, Decimal):  # money: exact, whatever the driver hands back
                current = Decimal(current)
            _over(tenant, quota, current + added, limit, retry_after_s)


def _scalar(session: Session, what: Any, *where: Any) -> Any:
    return session.execute(select(what).where(and_(*where))).scalar_one()


def _over(tenant: Tenant, quota: str, would_be: Any, limit: Any, retry_after_s: int) -> None:
    if would_be > limit:
        raise QuotaExceeded(
            f"tenant {tenant.name!r} is over its quota {quota}={limit} "
            f"(this enqueue would make it {would_be}); retry after {retry_after_s} s",
            quota=quota,
            retry_after_s=retry_after_s,
        )


def _until(now: datetime, then: datetime) -> int:
    return max(1, int((then - now).total_seconds()) + 1)


def _next_month(month: datetime) -> datetime:
    return (month + timedelta(days=32)).replace(day=1)


QUOTAS = ("max_in_flight", "max_jobs_per_day", "max_spend_per_day_usd", "max_spend_per_month_usd")


def set_quotas(database_url: str, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Set some of the tenant's quotas (None clears one); its quotas afterwards.

    A negative or non-finite value is refused (JobRequestError naming it), nothing changed."""
    from imagegen.worker.db import session_scope
    from imagegen.worker.errors import JobRequestError
    from imagegen.worker.tenants.keys import find_tenant

    for quota, value in changes.items():
        if quota not in QUOTAS:
            raise JobRequestError(f"unknown quota {quota!r}: one of {', '.join(QUOTAS)}")
        if value is not None and (not Decimal(value).is_finite() or Decimal(value) < 0):
            raise JobRequestError(f"{quota} must be 0 or more, not {value}")
    with session_scope(database_url) as session:
        tenant = find_tenant(session, name)
        for quota, value in changes.items():
            setattr(tenant, quota, value)
        session.flush()
        return {quota: getattr(tenant, quota) for quota in QUOTAS}
