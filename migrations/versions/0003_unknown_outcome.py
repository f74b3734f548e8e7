"""attempt outcome 'unknown': the worker died while the submit was in flight

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 23:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BEFORE = ("sending", "submitted", "succeeded", "refused", "transient", "permanent", "cancelled")
AFTER = (*BEFORE, "unknown")


def _outcome(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(
        *values, name="attempt_outcome", native_enum=False, create_constraint=True, length=16
    )


def _swap(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    with op.batch_alter_table("job_attempts") as batch:
        batch.alter_column(
            "outcome", existing_type=_outcome(old), type_=_outcome(new), existing_nullable=False
        )


def upgrade() -> None:
    _swap(BEFORE, AFTER)


def downgrade() -> None:
    op.execute("UPDATE job_attempts SET outcome = 'permanent' WHERE outcome = 'unknown'")
    _swap(AFTER, BEFORE)
