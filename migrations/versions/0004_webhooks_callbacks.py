"""fal webhooks kept for the job's run; jobs found by request id; per-job callback URL

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "fal_webhooks",
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("body", JSON_TYPE, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_fal_webhooks"),
    )
    op.create_index("ix_fal_webhooks_received_at", "fal_webhooks", ["received_at"])
    op.create_index("ix_jobs_fal_request_id", "jobs", ["fal_request_id"])
    op.add_column("jobs", sa.Column("callback_url", sa.String(2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("callback_url")
    op.drop_index("ix_jobs_fal_request_id", table_name="jobs")
    op.drop_index("ix_fal_webhooks_received_at", table_name="fal_webhooks")
    op.drop_table("fal_webhooks")
