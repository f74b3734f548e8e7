"""Stored images and edit jobs: the ``storing`` stage, input images, retention marks

``storing``: fal answered with images; the store stage copies them to our storage before
the job ends ``succeeded`` (``images_stored`` true, or false with ``storage_error`` and
fal's URLs kept). ``inputs``: an edit job's input images (and mask, consent reference) as
stored. ``images_purged_at`` / ``prompt_redacted_at``: what retention or an erasure
request removed, and when (the outcome and refusal category stay).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OLD = (
    "queued",
    "submitting",
    "at_fal",
    "collecting",
    "succeeded",
    "refused",
    "failed",
    "cancelled",
)
NEW = (*OLD[:4], "storing", *OLD[4:])
JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def _check(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("inputs", JSON, nullable=True))
        batch.add_column(sa.Column("images_stored", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("storage_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("images_purged_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("prompt_redacted_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("job_status", type_="check")
        batch.create_check_constraint("job_status", _check(NEW))


def downgrade() -> None:
    # a job still storing has its images from fal: it ends succeeded with them
    op.execute("UPDATE jobs SET status = 'succeeded' WHERE status = 'storing'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("job_status", type_="check")
        batch.create_check_constraint("job_status", _check(OLD))
        for column in (
            "prompt_redacted_at",
            "images_purged_at",
            "storage_error",
            "images_stored",
            "inputs",
        ):
            batch.drop_column(column)
