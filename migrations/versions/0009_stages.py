"""The job row as a state machine: submitting / at_fal / collecting replace running

``poll_at``: when the request a job has at fal is next checked (the poller's queue, a
partial index); ``submitted_at``: since when fal has it. A ``running`` row becomes
``at_fal`` when it has a request id (due at once), else ``queued`` (the sweeper publishes it).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OLD = ("queued", "running", "succeeded", "refused", "failed", "cancelled")
NEW = (
    "queued",
    "submitting",
    "at_fal",
    "collecting",
    "succeeded",
    "refused",
    "failed",
    "cancelled",
)
POLL_INDEX = "ix_jobs_poll_at_at_fal"


def _check(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("poll_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True))
        # a VARCHAR(16) with a CHECK (a non-native enum): only the CHECK changes
        batch.drop_constraint("job_status", type_="check")
        batch.create_check_constraint("job_status", _check(NEW))
    op.execute(
        "UPDATE jobs SET status = 'at_fal', poll_at = CURRENT_TIMESTAMP, "
        "submitted_at = COALESCE(started_at, CURRENT_TIMESTAMP), lease_owner = NULL, "
        "lease_until = NULL WHERE status = 'running' AND fal_request_id IS NOT NULL"
    )
    op.execute(
        "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL "
        "WHERE status = 'running'"
    )
    where = sa.text("status = 'at_fal'")
    op.create_index(POLL_INDEX, "jobs", ["poll_at"], postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    op.drop_index(POLL_INDEX, table_name="jobs")
    op.execute(
        "UPDATE jobs SET status = 'running' WHERE status IN ('submitting', 'at_fal', 'collecting')"
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("job_status", type_="check")
        batch.create_check_constraint("job_status", _check(OLD))
        batch.drop_column("submitted_at")
        batch.drop_column("poll_at")
