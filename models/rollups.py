"""Hourly totals of the job table for the dashboard's overview, kept by triggers (0015).

One row per (hour the jobs were created, tenant, key, refusal category, refusal source,
shard): ``key`` ``created`` counts every job created in that hour (with its money: what fal
billed, the spend upper bound of ``worker.jobs.tenant_stats``, how many were possibly
billed); a terminal status counts the jobs of that hour that ended so. A total is the sum
over its shards (spread so that concurrent writers rarely wait on one row). Postgres only:
on SQLite the table stays empty and the overview counts the jobs themselves.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Numeric, SmallInteger, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime


class JobHour(Base):
    __tablename__ = "job_hours"

    #: the start of the hour (UTC) the jobs were created in
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    refusal_category: Mapped[str] = mapped_column(String(100), primary_key=True)
    refusal_source: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    billed_usd: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    upper_usd: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    possibly_billed: Mapped[int] = mapped_column(BigInteger)
