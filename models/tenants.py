"""Tenants (the web apps or customers sharing one fal account) and their API keys.

Every job belongs to one tenant (``jobs.tenant_id``); the ``default`` tenant, written by
migration 0011 with a fixed id, owns every job enqueued without one, so a single-user setup
works unchanged. The quota columns are read by the quota checks of issue 24 (NULL: no limit).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Float, ForeignKey, Index, Integer, Numeric, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

#: the tenant of every job enqueued without one (and of every job older than migration 0011)
DEFAULT_TENANT_ID = uuid.UUID(int=1)
DEFAULT_TENANT_NAME = "default"
#: money columns: USD to a hundredth of a cent, up to 100 million
MONEY = Numeric(12, 4)


class Tenant(Base):
    """A tenant: its jobs, its keys, its share of fal's concurrency and its quotas."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: 1-64 of [a-z0-9_-], starting with a letter or digit (worker.tenants.names)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: its share of the fleet cap relative to the others' (fair share, issue 24 item 2)
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    max_in_flight: Mapped[int | None] = mapped_column(Integer)
    max_jobs_per_day: Mapped[int | None] = mapped_column(Integer)
    max_spend_per_day_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    max_spend_per_month_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        CheckConstraint("weight > 0", name="weight_positive"),
        CheckConstraint(
            "(max_in_flight IS NULL OR max_in_flight >= 0) AND "
            "(max_jobs_per_day IS NULL OR max_jobs_per_day >= 0) AND "
            "(max_spend_per_day_usd IS NULL OR max_spend_per_day_usd >= 0) AND "
            "(max_spend_per_month_usd IS NULL OR max_spend_per_month_usd >= 0)",
            name="quotas_not_negative",
        ),
    )


class TenantKey(Base):
    """An API key of a tenant, stored as its SHA-256 only (the key is shown once).

    A plain hash, not a slow password hash: keys are 256-bit random tokens, so there is
    nothing to brute-force, and a lookup by hash costs one index probe per request.
    """

    __tablename__ = "tenant_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: the key's first characters, to tell keys apart in listings
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Cooldown(Base):
    """A repeat offender slowed down: an end user (or, without one, a tenant) whose prompts
    fal or the pre-filter refused too often; new jobs are refused at enqueue until ``until``
    (``worker.tenants.cooldown``), unless lifted."""

    __tablename__ = "cooldowns"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    #: NULL: the tenant as a whole (jobs without an end user)
    end_user: Mapped[str | None] = mapped_column(String(200))
    refusals: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    until: Mapped[datetime] = mapped_column(UTCDateTime())
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "tenant_id", "end_user", "until"),)
