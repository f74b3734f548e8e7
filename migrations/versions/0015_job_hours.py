"""job_hours: hourly totals for the dashboard's overview, kept by triggers on Postgres

The overview charts jobs and refusals per hour or day and spend per tenant over the last
24 h to 30 days. Counting the job table for that read every row of the window: 147 ms for
24 h and 2.2 s for 7 days of a 1,000,000-row table (bench.table_scale). These totals make
it a read of at most a few thousand rows whatever the window holds. Statement triggers over
transition tables, as migration 0006's: a move between open states changes no total and
writes nothing (its deltas cancel out); a job's insert, the submit that gives it a fal
request (its spend upper bound) and its end each upsert one or two rows. Existing rows are
counted once here (under a lock, so that no job changes between the count and the triggers).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 01:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TERMINAL = "('succeeded', 'refused', 'failed', 'cancelled')"
HOUR = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
# worker.jobs.tenant_stats's spend upper bound of one job (kept equal to it)
UPPER = (
    "coalesce(billed_cost_usd, CASE WHEN billed_cost_usd IS NULL AND "
    "(possibly_billed OR fal_request_id IS NOT NULL) THEN estimated_cost_usd ELSE 0 END, 0)"
)


def _rows(rows: str, sign: int) -> str:
    """Each row's deltas: its ``created`` total (with its money) and its terminal status."""
    return (
        f"SELECT {HOUR}, tenant_id, 'created', '', '', {sign}, "
        f"{sign} * coalesce(billed_cost_usd, 0), {sign} * {UPPER}, "
        f"{sign} * (CASE WHEN possibly_billed THEN 1 ELSE 0 END) FROM {rows} "
        f"UNION ALL SELECT {HOUR}, tenant_id, status::text, coalesce(refusal_category, ''), "
        f"coalesce(refusal_source, ''), {sign}, 0, 0, 0 FROM {rows} WHERE status IN {TERMINAL}"
    )


def _function(name: str, deltas: str) -> str:
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO job_hours AS h
    (hour, tenant_id, key, refusal_category, refusal_source, shard, n, billed_usd,
     upper_usd, possibly_billed)
  SELECT hr, tid, k, category, source, floor(random() * 8)::smallint, sum(dn), sum(db),
         sum(du), sum(dp)
  FROM ({deltas}) AS d (hr, tid, k, category, source, dn, db, du, dp)
  GROUP BY hr, tid, k, category, source
  HAVING sum(dn) <> 0 OR sum(db) <> 0 OR sum(du) <> 0 OR sum(dp) <> 0
  ON CONFLICT (hour, tenant_id, key, refusal_category, refusal_source, shard) DO UPDATE
    SET n = h.n + EXCLUDED.n, billed_usd = h.billed_usd + EXCLUDED.billed_usd,
        upper_usd = h.upper_usd + EXCLUDED.upper_usd,
        possibly_billed = h.possibly_billed + EXCLUDED.possibly_billed;
  RETURN NULL;
END $$;
"""


FUNCTIONS = (
    _function("imagegen_hours_inserted_jobs", _rows("new_rows", 1))
    + _function("imagegen_hours_deleted_jobs", _rows("old_rows", -1))
    + _function(
        "imagegen_hours_updated_jobs",
        _rows("old_rows", -1) + " UNION ALL " + _rows("new_rows", 1),
    )
)
TRIGGERS = """
CREATE TRIGGER jobs_hours_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION imagegen_hours_inserted_jobs();
CREATE TRIGGER jobs_hours_update AFTER UPDATE ON jobs
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION imagegen_hours_updated_jobs();
CREATE TRIGGER jobs_hours_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION imagegen_hours_deleted_jobs();
"""
BACKFILL = f"""
INSERT INTO job_hours
  (hour, tenant_id, key, refusal_category, refusal_source, shard, n, billed_usd, upper_usd,
   possibly_billed)
SELECT hr, tid, k, category, source, 0, sum(dn), sum(db), sum(du), sum(dp)
FROM ({_rows("jobs", 1)}) AS d (hr, tid, k, category, source, dn, db, du, dp)
GROUP BY hr, tid, k, category, source
"""


def upgrade() -> None:
    op.create_table(
        "job_hours",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("refusal_category", sa.String(100), nullable=False),
        sa.Column("refusal_source", sa.String(16), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("billed_usd", sa.Numeric(18, 6), nullable=False),
        sa.Column("upper_usd", sa.Numeric(18, 6), nullable=False),
        sa.Column("possibly_billed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour",
            "tenant_id",
            "key",
            "refusal_category",
            "refusal_source",
            "shard",
            name="pk_job_hours",
        ),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)
    op.execute(BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in ("jobs_hours_insert", "jobs_hours_update", "jobs_hours_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON jobs")
        for kind in ("inserted_jobs", "deleted_jobs", "updated_jobs"):
            op.execute(f"DROP FUNCTION IF EXISTS imagegen_hours_{kind}()")
    op.drop_table("job_hours")
