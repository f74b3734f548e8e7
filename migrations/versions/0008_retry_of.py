"""jobs.retry_of: the failed job a job retries (``imagegen retry``), at most one retry each

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEX = "uq_jobs_retry_of"
FK = "fk_jobs_retry_of_jobs"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite rebuilds the table for the key
        batch.add_column(sa.Column("retry_of", sa.Uuid(), nullable=True))
        batch.create_foreign_key(FK, "jobs", ["retry_of"], ["id"], ondelete="SET NULL")
    where = sa.text("retry_of IS NOT NULL")
    op.create_index(
        INDEX, "jobs", ["retry_of"], unique=True, postgresql_where=where, sqlite_where=where
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.drop_column("retry_of")
