"""Repeat-offender cool-downs: an end user (or tenant) refused too often is slowed down

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cooldowns",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("end_user", sa.String(200), nullable=True),
        sa.Column("refusals", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_cooldowns_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_cooldowns"),
    )
    op.create_index(
        "ix_cooldowns_tenant_id_end_user_until", "cooldowns", ["tenant_id", "end_user", "until"]
    )


def downgrade() -> None:
    op.drop_index("ix_cooldowns_tenant_id_end_user_until", table_name="cooldowns")
    op.drop_table("cooldowns")
