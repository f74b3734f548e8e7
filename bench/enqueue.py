"""Enqueue speed: `enqueue_many` batches and single `enqueue` calls, from one process.

    python -m bench.enqueue [--jobs 10000] [--batch 1000] [--singles 1000] [--redis-url URL]

A throwaway Postgres database (migrated) and Redis db 13 (or --redis-url; flushed before
and after); no worker runs, so the task messages stay queued and are dropped at the end.
First `--jobs` jobs in `enqueue_many` batches of `--batch` (one transaction and one Redis
pipeline a batch; a warm-up batch is not counted), then `--singles` single `enqueue` calls
on the warm connection: jobs/s of the batches, p50/p99/max of the single calls. Prints a
table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import uuid

import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.host import one_run_at_a_time
from imagegen.worker.celery_app import create_app
from imagegen.worker.db import dispose_engines, upgrade
from imagegen.worker.jobs.enqueue import enqueue, enqueue_many
from imagegen.worker.settings import Settings

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.enqueue", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs through enqueue_many")
    parser.add_argument("--batch", type=int, default=1_000, help="items per enqueue_many call")
    parser.add_argument("--singles", type=int, default=1_000, help="single enqueue calls")
    parser.add_argument(
        "--redis-url", help="a Redis database to flush and use (default: any free one of 1-15)"
    )
    args = parser.parse_args(argv)
    if min(args.jobs, args.batch, args.singles) < 1:
        parser.error("--jobs, --batch and --singles must be at least 1")
    return args


def _admin(statement: str) -> None:
    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def _flush_redis(url: str) -> None:
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        client.flushdb()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(args: argparse.Namespace, settings: Settings) -> dict[str, float | int]:
    app = create_app(settings)
    tag = uuid.uuid4().hex[:6]
    enqueue_many([f"warm-up {i} {tag}" for i in range(args.batch)], settings=settings, app=app)
    done, batch_s = 0, 0.0
    while done < args.jobs:
        n = min(args.batch, args.jobs - done)
        prompts = [f"batch job {done + i} {tag}" for i in range(n)]
        start = time.perf_counter()
        enqueue_many(prompts, settings=settings, app=app)
        batch_s += time.perf_counter() - start
        done += n
    singles_ms: list[float] = []
    for i in range(args.singles):
        start = time.perf_counter()
        enqueue(f"single job {i} {tag}", settings=settings, app=app)
        singles_ms.append((time.perf_counter() - start) * 1000)
    return {
        "enqueue_many_jobs_per_s": round(done / batch_s, 1),
        "batch": args.batch,
        "jobs": done,
        "single_enqueue_p50_ms": round(statistics.median(singles_ms), 3),
        "single_enqueue_p99_ms": round(_percentile(singles_ms, 0.99), 3),
        "single_enqueue_max_ms": round(max(singles_ms), 3),
        "singles": args.singles,
    }


def render(result: dict[str, float | int]) -> None:
    table = Table(title="enqueue from one process (Postgres + Redis on this machine)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row(
        f"enqueue_many, jobs/s ({result['jobs']} jobs, batches of {result['batch']})",
        f"{result['enqueue_many_jobs_per_s']:.0f}",
    )
    for name in ("p50", "p99", "max"):
        table.add_row(
            f"single enqueue {name}, ms ({result['singles']} calls, warm)",
            f"{result[f'single_enqueue_{name}_ms']:.2f}",
        )
    Console(stderr=True).print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with one_run_at_a_time(args.redis_url, "bench.enqueue") as args.redis_url:
        return run(args)


def run(args: argparse.Namespace) -> int:
    db_name = f"bench_enqueue_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"
    _admin(f'CREATE DATABASE "{db_name}"')
    _flush_redis(args.redis_url)
    try:
        upgrade(url)
        result = measure(args, Settings(DATABASE_URL=url, REDIS_URL=args.redis_url))
    finally:
        dispose_engines()
        _admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        _flush_redis(args.redis_url)
    render(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
