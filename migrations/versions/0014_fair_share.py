"""The fair share of the fleet cap: the ``waiting`` state and what the granter reads

``waiting``: the fleet was at its cap (IMAGEGEN_FAL_CONCURRENCY) when a submit tried; the
job holds no broker message and no slot. A freed slot is granted to the tenant with
waiting jobs furthest below its weighted share (``worker.jobs.fairshare``), which moves
its oldest waiting job back to ``queued`` with ``slot_granted_at`` set and the slot kept.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

OLD = (
    "queued",
    "submitting",
    "at_fal",
    "collecting",
    "storing",
    "succeeded",
    "refused",
    "failed",
    "cancelled",
)
NEW = (OLD[0], "waiting", *OLD[1:])
WAITING = sa.text("status = 'waiting'")
HOLDING = sa.text("status IN ('queued', 'submitting', 'at_fal')")


def _check(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("slot_granted_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("job_status", type_="check")
        batch.create_check_constraint("job_status", _check(NEW))
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["tenant_id", "created_at"],
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )
    op.create_index(
        "ix_jobs_holding",
        "jobs",
        ["tenant_id", "status"],
        postgresql_where=HOLDING,
        sqlite_where=HOLDING,
    )


def downgrade() -> None:
    # a waiting job has no message: queued with a lapsed grace, the sweeper publishes it
    op.execute("UPDATE jobs SET status = 'queued', lease_until = NULL WHERE status = 'waiting'")
    op.drop_index("ix_jobs_holding", table_name="jobs")
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("job_status", type_="check")
        batch.create_check_constraint("job_status", _check(OLD))
        batch.drop_column("slot_granted_at")
