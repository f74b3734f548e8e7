"""Tenants: the ``tenants`` table, their hashed API keys, and each job's tenant and end user

The ``default`` tenant (a fixed id) is written here; every existing job becomes its job, and
``jobs.tenant_id``'s server default is its id so writers that predate tenants keep working.
Keys are stored as SHA-256 only: they are 256-bit random tokens, so a fast hash is enough (there
is nothing to guess) and a request costs one index probe. ``end_user``: the web app's user id,
indexed with ``created_at`` (per-user limits). The idempotency key becomes unique per tenant.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 21:00:00
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

DEFAULT_TENANT_ID = uuid.UUID(int=1)
MONEY = sa.Numeric(12, 4)
TS = sa.DateTime(timezone=True)
FK = "fk_jobs_tenant_id_tenants"
IDEMPOTENCY = "uq_jobs_idempotency_key"
QUOTAS = (
    "(max_in_flight IS NULL OR max_in_flight >= 0) AND "
    "(max_jobs_per_day IS NULL OR max_jobs_per_day >= 0) AND "
    "(max_spend_per_day_usd IS NULL OR max_spend_per_day_usd >= 0) AND "
    "(max_spend_per_month_usd IS NULL OR max_spend_per_month_usd >= 0)"
)


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("weight", sa.Float(), server_default="1", nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=True),
        sa.Column("max_jobs_per_day", sa.Integer(), nullable=True),
        sa.Column("max_spend_per_day_usd", MONEY, nullable=True),
        sa.Column("max_spend_per_month_usd", MONEY, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
        sa.CheckConstraint("weight > 0", name="ck_tenants_weight_positive"),
        sa.CheckConstraint(QUOTAS, name="ck_tenants_quotas_not_negative"),
    )
    op.execute(
        tenants.insert().values(
            id=DEFAULT_TENANT_ID, name="default", weight=1.0, created_at=sa.func.now()
        )
    )
    op.create_table(
        "tenant_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_tenant_keys_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tenant_keys"),
        sa.UniqueConstraint("key_hash", name="uq_tenant_keys_key_hash"),
    )
    op.create_index("ix_tenant_keys_tenant_id", "tenant_keys", ["tenant_id"])
    with op.batch_alter_table("jobs") as batch:  # SQLite rebuilds the table for the key
        # NOT NULL with a server default: existing rows get the default tenant as they gain it
        batch.add_column(
            sa.Column(
                "tenant_id",
                sa.Uuid(),
                server_default=sa.text(f"'{DEFAULT_TENANT_ID.hex}'"),
                nullable=False,
            )
        )
        batch.add_column(sa.Column("end_user", sa.String(200), nullable=True))
        batch.create_foreign_key(FK, "tenants", ["tenant_id"], ["id"])
    op.create_index("ix_jobs_tenant_id_created_at", "jobs", ["tenant_id", "created_at"])
    has_user = sa.text("end_user IS NOT NULL")
    op.create_index(
        "ix_jobs_end_user_created_at",
        "jobs",
        ["end_user", "created_at"],
        postgresql_where=has_user,
        sqlite_where=has_user,
    )
    _idempotency_index(["tenant_id", "idempotency_key"])


def _idempotency_index(columns: list[str]) -> None:
    op.drop_index(IDEMPOTENCY, table_name="jobs")
    has_key = sa.text("idempotency_key IS NOT NULL")
    op.create_index(
        IDEMPOTENCY, "jobs", columns, unique=True, postgresql_where=has_key, sqlite_where=has_key
    )


def downgrade() -> None:
    # fails (unique) if two tenants used one idempotency key: they would be one job again
    _idempotency_index(["idempotency_key"])
    op.drop_index("ix_jobs_end_user_created_at", table_name="jobs")
    op.drop_index("ix_jobs_tenant_id_created_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.drop_column("end_user")
        batch.drop_column("tenant_id")
    op.drop_index("ix_tenant_keys_tenant_id", table_name="tenant_keys")
    op.drop_table("tenant_keys")
    op.drop_table("tenants")
