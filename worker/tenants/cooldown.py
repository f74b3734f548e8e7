"""Repeat-offender cool-downs: N policy refusals (fal's or the pre-filter's) of one end user
within M minutes start a cool-down of T minutes (IMAGEGEN_COOLDOWN_REFUSALS, _WINDOW_MIN,
_MIN) during which that user's new jobs are refused at enqueue, saying why and until when.
Jobs without an end user count for their tenant as a whole.

A refused job's move publishes the cool-down task (``worker.jobs.hooks``), which counts the
refusals and starts one; its Celery result (Flower) says whom it stopped and until when.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from imagegen.models import Cooldown, Job, JobStatus, Tenant, utcnow
from imagegen.worker.db import session_scope
from imagegen.worker.errors import CoolingDown
from imagegen.worker.settings import Settings


def _who(tenant_id: uuid.UUID, end_user: str | None) -> list[Any]:
    user = Cooldown.end_user.is_(None) if end_user is None else Cooldown.end_user == end_user
    return [Cooldown.tenant_id == tenant_id, user]


def active(
    session: Session, tenant_id: uuid.UUID, end_user: str | None, now: datetime
) -> Cooldown | None:
    query = (
        select(Cooldown)
        .where(*_who(tenant_id, end_user), Cooldown.until > now, Cooldown.lifted_at.is_(None))
        .order_by(Cooldown.until.desc())
        .limit(1)
    )
    return session.execute(query).scalar_one_or_none()


def check(session: Session, tenant_id: uuid.UUID, end_user: str | None, now: datetime) -> None:
    """Raise CoolingDown (HTTP 429 with Retry-After, CLI exit 2) while one is active."""
    found = active(session, tenant_id, end_user, now)
    if found is None:
        return
    who = f"end user {end_user!r}" if end_user is not None else "this tenant"
    raise CoolingDown(
        f"{who} is cooling down until {found.until.isoformat(timespec='seconds')}: "
        f"{found.refusals} prompts refused for policy within a few minutes; new jobs are "
        "refused until then (an operator can lift it: imagegen cooldown lift)",
        quota="cooldown",
        retry_after_s=max(1, int((found.until - now).total_seconds()) + 1),
    )


def after_refusal(
    settings: Settings, tenant_id: uuid.UUID, end_user: str | None, now: datetime | None = None
) -> Cooldown | None:
    """Count the recent refusals; start a cool-down when they reach the limit (None: not)."""
    limit = settings.cooldown_refusals
    if limit <= 0:
        return None
    now = now or utcnow()
    since = now - timedelta(minutes=settings.cooldown_window_min)
    user = Job.end_user.is_(None) if end_user is None else Job.end_user == end_user
    with session_scope(settings.database_url) as session:
        if active(session, tenant_id, end_user, now) is not None:
            return None
        refused = session.execute(
            select(func.count(Job.id)).where(
                Job.tenant_id == tenant_id,
                user,
                Job.status == JobStatus.REFUSED,
                Job.finished_at >= since,
            )
        ).scalar_one()
        if refused < limit:
            return None
        until = now + timedelta(minutes=settings.cooldown_min)
        started = Cooldown(
            tenant_id=tenant_id, end_user=end_user, refusals=refused, started_at=now, until=until
        )
        session.add(started)
        session.flush()
        session.expunge(started)
        return started


def lift(database_url: str, tenant: str, end_user: str | None) -> int:
    """End the active cool-downs of the end user (None: the tenant's own); how many."""
    from imagegen.worker.tenants.keys import find_tenant

    now = utcnow()
    with session_scope(database_url) as session:
        tenant_id = find_tenant(session, tenant).id
        lifted = session.execute(
            update(Cooldown)
            .where(*_who(tenant_id, end_user), Cooldown.until > now, Cooldown.lifted_at.is_(None))
            .values(lifted_at=now)
            .returning(Cooldown.id)
        )
        return len(lifted.all())


def list_active(database_url: str) -> list[dict[str, Any]]:
    now = utcnow()
    query = (
        select(Tenant.name, Cooldown)
        .join(Tenant, Tenant.id == Cooldown.tenant_id)
        .where(Cooldown.until > now, Cooldown.lifted_at.is_(None))
        .order_by(Cooldown.until)
    )
    with session_scope(database_url) as session:
        return [
            {
                "tenant": name,
                "end_user": c.end_user,
                "refusals": c.refusals,
                "started_at": c.started_at.isoformat(),
                "until": c.until.isoformat(),
            }
            for name, c in session.execute(query).all()
        ]
