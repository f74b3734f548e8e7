"""Jobs, refusals by category and spend per tenant (``imagegen stats --by tenant``, the API).

Spend: ``billed_usd`` sums what fal billed where it is known; ``spend_upper_bound_usd``
adds the estimate of every job that may have been billed without a known bill (a request
that reached fal, or a submit whose answer was lost): budgets use the upper bound.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, case, func, or_, select, true
from sqlalchemy.orm import Session

from imagegen.models import Cooldown, Job, JobStatus, Tenant, utcnow

_MAYBE_BILLED = and_(
    Job.billed_cost_usd.is_(None),
    or_(Job.possibly_billed.is_(True), Job.fal_request_id.is_not(None)),
)
_UPPER = func.coalesce(Job.billed_cost_usd, case((_MAYBE_BILLED, Job.estimated_cost_usd), else_=0))


def tenant_stats(
    session: Session, *, since: datetime | None = None, tenant_id: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    """One entry per tenant (with jobs in the window), by name."""
    where = [Job.tenant_id == Tenant.id]
    if since is not None:
        where.append(Job.created_at >= since)
    if tenant_id is not None:
        where.append(Tenant.id == tenant_id)
    totals = (
        select(
            Tenant.name,
            func.count(Job.id),
            func.count(Job.id).filter(Job.status == JobStatus.REFUSED),
            func.coalesce(func.sum(Job.billed_cost_usd), 0),
            func.coalesce(func.sum(_UPPER), 0),
            func.count(Job.id).filter(Job.possibly_billed.is_(True)),
        )
        .where(*where)
        .group_by(Tenant.name)
        .order_by(Tenant.name)
    )
    refusals = (
        select(Tenant.name, Job.refusal_category, func.count(Job.id))
        .where(*where, Job.status == JobStatus.REFUSED)
        .group_by(Tenant.name, Job.refusal_category)
    )
    by_category: dict[str, dict[str, int]] = {}
    for name, category, count in session.execute(refusals).all():
        by_category.setdefault(name, {})[category or "unspecified"] = count
    cooldowns = _cooldowns(session, since, tenant_id)
    return [
        {
            "tenant": name,
            "jobs": jobs,
            "refused": refused,
            "refusals_by_category": by_category.get(name, {}),
            "billed_usd": _money(billed),
            "spend_upper_bound_usd": _money(upper),
            "possibly_billed": possibly,
            **cooldowns.get(name, {"cooldowns_started": 0, "cooling_down": 0}),
        }
        for name, jobs, refused, billed, upper, possibly in session.execute(totals).all()
    ]


def _cooldowns(
    session: Session, since: datetime | None, tenant_id: uuid.UUID | None
) -> dict[str, dict[str, int]]:
    """Repeat-offender cool-downs per tenant: started in the window, and running now."""
    now = utcnow()
    started = Cooldown.started_at >= since if since is not None else true()
    running = and_(Cooldown.until > now, Cooldown.lifted_at.is_(None))
    query = (
        select(
            Tenant.name,
            func.count(Cooldown.id).filter(started),
            func.count(Cooldown.id).filter(running),
        )
        .join(Tenant, Tenant.id == Cooldown.tenant_id)
        .group_by(Tenant.name)
    )
    if tenant_id is not None:
        query = query.where(Tenant.id == tenant_id)
    return {
        name: {"cooldowns_started": begun, "cooling_down": now_running}
        for name, begun, now_running in session.execute(query).all()
    }


def _money(value: Any) -> str:
    return str(Decimal(value).quantize(Decimal("0.000001")))
