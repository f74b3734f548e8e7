"""What the throughput benchmarks share: the run's records, database and Redis helpers.

Imported by the closed-loop run, its probe and its report (which import nothing of each
other's that imports them back).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.host import Emulator

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TERMINAL = frozenset({"succeeded", "refused", "failed", "cancelled"})


def db_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@dataclass
class Context:
    args: argparse.Namespace
    db_name: str
    emulator: Emulator
    env: dict[str, str]
    log_dir: Path

    @property
    def url(self) -> str:
        return db_url(self.db_name)


@dataclass
class Sample:
    t: float
    counts: Counter[str]
    in_flight_db: int  # running with a fal request id
    emulator_active: int  # IN_QUEUE + IN_PROGRESS at the emulator
    rss_mb: float
    cpu_s: float  # the worker host's CPU so far
    machine: tuple[float, float]  # busy and total CPU seconds of the whole machine so far
    emulator_cpu_s: float
    api_rss_mb: float = 0.0  # webhook mode: `imagegen api`, part of the host
    api_cpu_s: float = 0.0


@dataclass(frozen=True)
class Second:
    """One second of a run (since the first enqueue), counted from the job table."""

    t: int
    claimed: int  # jobs.started_at: a worker took the job
    sent: int  # job_attempts.started_at: the submit POST left
    fal_done: int  # sent + the emulator's latency: fal finished the request
    finished: int  # jobs.finished_at: the outcome was recorded


@dataclass
class Run:
    """What one run measured; the figures are derived in bench.report."""

    label: str
    jobs: int
    mode: str = "polling"  # ours: "polling" or "webhook"
    samples: list[Sample] = field(default_factory=list)
    enqueue_s: float = 0.0
    startup_cpu_s: float = 0.0
    cpu_s: float = 0.0  # the host: worker processes, and the API in webhook mode
    api_cpu_s: float | None = None  # the API alone (webhook mode)
    webhooks_stored: int | None = None  # rows in fal_webhooks at the end (webhook mode)
    emulator: dict[str, Any] = field(default_factory=dict)
    xacts: int | None = None
    statements: int | None = None
    done: int = 0
    span_s: float = 0.0
    p50_s: float | None = None
    p95_s: float | None = None
    final: Counter[str] = field(default_factory=Counter)
    log_events: Counter[str] = field(default_factory=Counter)
    api_log_events: Counter[str] = field(default_factory=Counter)
    window_s: float | None = None  # naive: the time box, when it was used
    stalled_s: float | None = None  # ours: stopped after no job finished for this long
    timeline: list[Second] = field(default_factory=list)  # ours, with --timeline


def admin_sql(statement: str, **params: Any) -> Any:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            result = conn.execute(text(statement), params)
            return result.all() if result.returns_rows else []
    finally:
        admin.dispose()


def flush_redis(redis_url: str) -> None:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        client.flushdb()


def db_counters(db_name: str) -> tuple[int, int | None]:
    """Transactions of the bench database; statements too when pg_stat_statements runs."""
    xacts = admin_sql(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :n", n=db_name
    )[0][0]
    usable = admin_sql(
        "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements' "
        "AND current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'"
    )[0][0]
    if not usable:
        return int(xacts), None
    calls = admin_sql(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = :n",
        n=db_name,
    )[0][0]
    return int(xacts), int(calls)


def worker_env(url: str, redis_url: str, emulator: Emulator, concurrency: int) -> dict[str, str]:
    """The harness's environment (IMAGEGEN_* included) with the services pointed at.

    Polling mode unless ``--webhook``: an IMAGEGEN_WEBHOOK_URL of the caller is dropped.
    """
    env = {k: v for k, v in os.environ.items() if k != "IMAGEGEN_WEBHOOK_URL"}
    env.update(DATABASE_URL=url, REDIS_URL=redis_url, FAL_KEY="bench", **emulator.env)
    env.update(IMAGEGEN_FAL_CONCURRENCY=str(concurrency), IMAGEGEN_LOG_FORMAT="json")
    # stored images in a temporary directory, not the working directory
    env.setdefault(
        "IMAGEGEN_STORAGE_URL", "file:" + tempfile.mkdtemp(prefix="imagegen-bench-images-")
    )
    return env


def log_events(logs: str) -> Counter[str]:
    """Warnings and errors in the worker logs (JSON events, or Celery's own lines)."""
    events: Counter[str] = Counter()
    for line in logs.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                level, name = event.get("level"), event.get("event")
                if level not in ("debug", "info"):
                    events[f"{level}: {name} {event.get('error', '')}".strip()] += 1
                continue
        if any(word in line for word in ("ERROR", "WARNING", "CRITICAL", "Traceback", "Error")):
            events[line.strip()[:200]] += 1
    return events
