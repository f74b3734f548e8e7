"""Partial indexes on the columns most jobs leave NULL

An UPDATE that changes an indexed column (every one the worker makes: status, lease,
fal request id) adds an entry to every index of the row, and a job is updated three times.
Three indexes covered columns that are NULL for most jobs and that no query asks for NULL:
``refusal_category`` (refused jobs only), ``fal_request_id`` (NULL until the submit) and
``idempotency_key`` (optional). Indexing only the non-NULL rows leaves them out of those
writes (Postgres and SQLite both skip a row that fails an index's predicate): 21 -> 14 index
entries a job, ~16 % less Postgres CPU per job, and smaller indexes. Every query on these
columns compares them with ``=`` (or asks IS NOT NULL), which implies the predicate, so the
planner still uses them. The idempotency key stays unique (a unique partial index instead of
a unique constraint; NULLs never conflicted). The swap runs in one transaction on Postgres
(writes to ``jobs`` wait for it: 0.5 s at a million rows, measured; 1.7 s back down).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: (index name, columns, the column that must be non-NULL, unique)
PARTIAL = (
    (
        "ix_jobs_refusal_category_created_at",
        ["refusal_category", "created_at"],
        "refusal_category",
        False,
    ),
    ("ix_jobs_fal_request_id", ["fal_request_id"], "fal_request_id", False),
)
KEY = "uq_jobs_idempotency_key"


def _partial(name: str, columns: list[str], column: str, unique: bool) -> None:
    where = sa.text(f"{column} IS NOT NULL")
    op.create_index(
        name, "jobs", columns, unique=unique, postgresql_where=where, sqlite_where=where
    )


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite rebuilds the table to drop it
        batch.drop_constraint(KEY, type_="unique")
    _partial(KEY, ["idempotency_key"], "idempotency_key", True)
    for name, columns, column, unique in PARTIAL:
        op.drop_index(name, table_name="jobs")
        _partial(name, columns, column, unique)


def downgrade() -> None:
    for name, columns, _column, unique in PARTIAL:
        op.drop_index(name, table_name="jobs")
        op.create_index(name, "jobs", columns, unique=unique)
    op.drop_index(KEY, table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.create_unique_constraint(KEY, ["idempotency_key"])
