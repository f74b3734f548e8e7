"""What a job costs: the estimate at enqueue, fal's billable units and the billed amount

``estimated_cost_usd``: by the configured price table (an estimate, for budgets before the
answer). ``billable_units``: fal's ``x-fal-billable-units`` of the result (NULL: not known,
e.g. a refusal at submit or webhook mode). ``billed_cost_usd``: units x fal's unit price
(NULL: not known). ``possibly_billed``: a submit whose answer was lost after fal may have
created the request (counted in spend at the estimate, an upper bound).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(14, 6)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("estimated_cost_usd", MONEY, nullable=True))
        batch.add_column(sa.Column("billable_units", sa.Numeric(18, 6), nullable=True))
        batch.add_column(sa.Column("billed_cost_usd", MONEY, nullable=True))
        batch.add_column(
            sa.Column("possibly_billed", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in ("possibly_billed", "billed_cost_usd", "billable_units"):
            batch.drop_column(column)
        batch.drop_column("estimated_cost_usd")
