"""The job table at scale: `imagegen jobs` and `imagegen stats` queries on N rows, with plans.

    python -m bench.table_scale [--rows 1000000]

Fills a throwaway Postgres database with N jobs (realistic mix of statuses and refusal
categories, one attempt row per job) using generate_series, then times the exact queries
the CLI runs (best of 5, warm) and prints their EXPLAIN ANALYZE plans; then the dashboard's
pages (``ui_*_ms``: median server time, bench.ui_pages). `stats` reads the
totals the triggers of migration 0006 keep, checked here against a live count (timed too).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, text

from bench.ui_pages import time_pages
from imagegen.models import JobStatus
from imagegen.worker.db import dispose_engines, session_scope, upgrade
from imagegen.worker.jobs.queries import list_jobs, live_counts, stats

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

FILL = """
INSERT INTO jobs (id, tenant_id, prompt, params, model, status, refusal_category,
                  refusal_message, refusal_source, images, attempts, created_at, updated_at,
                  finished_at)
SELECT gen_random_uuid(),
       CASE WHEN g % 5 = 0 THEN :tenant_b ELSE :tenant_a END,
       'prompt ' || g, '{"quality": "high"}'::jsonb, 'openai/gpt-image-2',
       (ARRAY['succeeded','succeeded','succeeded','succeeded','succeeded','succeeded',
              'refused','failed','cancelled','queued'])[1 + g % 10],
       CASE WHEN g % 10 = 6 THEN (ARRAY['celebrity_likeness','trademark_ip','sexual_minors',
            'violence_named_individual','self_harm_instructions','hate_protected_group'])
            [1 + (g / 10) % 6]
       END,
       CASE WHEN g % 10 = 6 THEN 'refused' END,
       CASE WHEN g % 10 = 6 THEN (CASE WHEN g % 3 = 0 THEN 'prefilter' ELSE 'fal' END) END,
       CASE WHEN g % 10 < 6 THEN jsonb_build_array(jsonb_build_object(
            'url', 'https://fal.example/' || g || '.png', 'storage_key', 'jobs/' || g || '/0.png',
            'content_type', 'image/png', 'width', 1024, 'height', 1024)) END,
       1, now() - (g || ' seconds')::interval, now(), now()
FROM generate_series(1, :rows) AS g
"""
TENANTS = (
    "INSERT INTO tenants (id, name, created_at) "
    "VALUES (:a, 'bench-a', now()), (:b, 'bench-b', now())"
)
ATTEMPTS = """
INSERT INTO job_attempts (job_id, number, started_at, finished_at, outcome)
SELECT id, 1, created_at, created_at + (10 + abs(hashtext(id::text)) % 50) * interval '1 second',
       'succeeded'
FROM jobs
"""


def _timed(work: Callable[[], Any], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def _plan(url: str, sql: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql)).scalars()
        plan = "\n".join(rows)
    engine.dispose()
    return plan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    name = f"imagegen_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        run(url, rows)
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def run(url: str, rows: int) -> None:
    upgrade(url)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    start = time.perf_counter()
    tenants = {"a": uuid.uuid4(), "b": uuid.uuid4()}
    with engine.connect() as conn:
        conn.execute(text(TENANTS), tenants)
        conn.execute(text(FILL), {"rows": rows, "tenant_a": tenants["a"], "tenant_b": tenants["b"]})
        conn.execute(text(ATTEMPTS))
        conn.execute(text("VACUUM ANALYZE"))
    print(f"filled {rows:,} jobs (+ attempts) in {time.perf_counter() - start:.1f}s")
    engine.dispose()

    def refused() -> Any:
        with session_scope(url) as s:
            return list_jobs(session=s, status=JobStatus.REFUSED, limit=50)

    def by_category() -> Any:  # the partial index of migration 0007
        with session_scope(url) as s:
            return list_jobs(
                session=s, status=JobStatus.REFUSED, category="celebrity_likeness", limit=50
            )

    def counts() -> Any:
        with session_scope(url) as s:
            return stats(session=s)

    def live() -> Any:  # what stats counted before the kept totals (migration 0006)
        with session_scope(url) as s:
            return live_counts(s)

    figures = {
        "jobs_refused_limit_50_ms": _timed(refused),
        "jobs_refused_category_limit_50_ms": _timed(by_category),
        "stats_ms": _timed(counts),
        "stats_live_count_ms": _timed(live, repeat=2),
    }
    kept = counts()
    print(json.dumps(kept, indent=1))
    by_status, _, submissions = live()
    if kept["by_status"] != {s.value: by_status.get(s.value, 0) for s in JobStatus} or (
        kept["fal_submissions"] != submissions
    ):
        raise SystemExit("the kept totals differ from a live count of the table")
    print("kept totals = a live count of the table")
    for label, sql in (
        ("imagegen jobs --status refused --limit 50", _LIST_SQL),
        ("imagegen jobs --status refused --category celebrity_likeness --limit 50", _CATEGORY_SQL),
        ("imagegen stats (open jobs, counted live)", _OPEN_SQL),
        ("imagegen stats (kept totals)", _TOTALS_SQL),
    ):
        print(f"\n--- {label}\n{_plan(url, sql)}")
    figures.update(time_pages(url))  # the dashboard's pages (issue 25 item 4)
    print(json.dumps({"rows": rows, **{k: round(v, 1) for k, v in figures.items()}}))


_LIST_SQL = "SELECT * FROM jobs WHERE status = 'refused' ORDER BY created_at DESC LIMIT 50"
_CATEGORY_SQL = (
    "SELECT * FROM jobs WHERE status = 'refused' AND refusal_category = 'celebrity_likeness' "
    "ORDER BY created_at DESC LIMIT 50"
)
_OPEN_SQL = (
    "SELECT status, count(*) FROM jobs WHERE status IN ('queued', 'running') GROUP BY status"
)
_TOTALS_SQL = (
    "SELECT key, refusal_category, refusal_source, sum(n) FROM job_counts "
    "GROUP BY key, refusal_category, refusal_source"
)

if __name__ == "__main__":
    main()
