"""refusal_source: 'fal' or 'prefilter' (refused by our moderation step before any submit)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("refusal_source", sa.String(16), nullable=True))
    op.execute("UPDATE jobs SET refusal_source = 'fal' WHERE status = 'refused'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("refusal_source")
