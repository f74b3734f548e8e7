"""Throughput of the real pipeline against the fal emulator, next to the naive pattern.

`python -m bench.throughput --jobs N --latency SECONDS --fal-concurrency C [--processes 2]
[--threads 500] [--webhook] [--naive-window 60] [--skip-naive] [--timeout 900]
[--stall-after S] [--print-every 10] [--timeline] [--redis-url URL]`

A throwaway Postgres database, Redis db 12 flushed, `imagegen fal-emulator` in its own
process, one worker host started the documented way (`--processes` Celery workers on the
threads pool, settings at their defaults), N jobs queued with `enqueue_many`; sampled every
0.5 s until all are terminal. With `--webhook` the workers run in webhook mode
(`IMAGEGEN_WEBHOOK_URL` pointing at `imagegen api`, one uvicorn process started next to
the host and counted into its CPU and RSS, also shown on its own; no polling fallback during
the run: `IMAGEGEN_WEBHOOK_FALLBACK_S` 600 unless set). Then the naive pattern
(`bench/naive.py`: `fal_client.subscribe` in a task on the default prefork pool) for
`--naive-window` seconds against the same emulator. A run in which no job finishes for
`--stall-after` seconds (default max(120, 3 x latency + 60)) is stopped and reported stalled.
Prints a table (with `--timeline`, a second one: jobs claimed, sent to fal, done at fal and
finished, second by second, from the job table), then one JSON object as the last line.
Redis db 12 unless `--redis-url`; two runs on one Redis database refuse to overlap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import Connection, create_engine, insert, text
from sqlalchemy.pool import NullPool

from bench import naive
from bench.host import (
    ApiServer,
    Emulator,
    WorkerHost,
    active,
    machine_busy_s,
    one_run_at_a_time,
)
from bench.report import render
from models import Job, JobStatus, utcnow
from worker.api import enqueue_many
from worker.celery_app import create_app, worker_argv
from worker.db import dispose_engines, upgrade
from worker.logs import configure
from worker.settings import Settings

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TERMINAL = frozenset({"succeeded", "refused", "failed", "cancelled"})
SAMPLE_EVERY_S = 0.5
WEBHOOK_FALLBACK_S = "600"  # longer than any run here: a lost callback shows as a stuck job
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
TIMELINE_SQL = """
WITH t0 AS (SELECT min(created_at) AS t0 FROM jobs),
events AS (
  SELECT extract(epoch FROM j.started_at - t0) AS s, 'claimed' AS k FROM jobs j, t0
  WHERE j.started_at IS NOT NULL
  UNION ALL SELECT extract(epoch FROM a.started_at - t0), 'sent' FROM job_attempts a, t0
  UNION ALL SELECT extract(epoch FROM a.started_at - t0) + :latency_s, 'fal_done'
  FROM job_attempts a, t0 WHERE a.fal_request_id IS NOT NULL
  UNION ALL SELECT extract(epoch FROM j.finished_at - t0), 'finished' FROM jobs j, t0
  WHERE j.finished_at IS NOT NULL
)
SELECT floor(s)::int AS t, count(*) FILTER (WHERE k = 'claimed'),
  count(*) FILTER (WHERE k = 'sent'), count(*) FILTER (WHERE k = 'fal_done'),
  count(*) FILTER (WHERE k = 'finished')
FROM events GROUP BY 1 ORDER BY 1
"""
COUNTS_SQL = "SELECT status, fal_request_id IS NOT NULL, count(*) FROM jobs GROUP BY 1, 2"
TIMES_SQL = """
SELECT count(*), max(finished_at), extract(epoch FROM max(finished_at) - min(created_at)),
  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)),
  percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
FROM jobs WHERE finished_at IS NOT NULL AND finished_at <= :until
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--latency", type=float, required=True, help="emulator latency, s")
    parser.add_argument("--fal-concurrency", type=int, required=True, help="C")
    parser.add_argument(
        "--round-trip",
        type=float,
        default=0.0,
        help="s added to every fal answer (the emulator's --round-trip): fal over a network",
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=500)
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="webhook mode: fal calls back to `imagegen api` (started here) instead of polls",
    )
    parser.add_argument("--naive-window", type=float, default=60.0)
    parser.add_argument("--print-every", type=float, default=10.0, help="progress lines, s")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--stall-after",
        type=float,
        default=None,
        help="stop when no job finished for this long, s (default max(120, 3 x latency + 60))",
    )
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="also print, second by second, jobs claimed, sent to fal, done at fal, finished",
    )
    parser.add_argument(
        "--redis-url", help="a Redis database to flush and use (default: any free one of 1-15)"
    )
    return parser.parse_args(argv)


@dataclass
class Context:
    args: argparse.Namespace
    db_name: str
    emulator: Emulator
    env: dict[str, str]
    log_dir: Path

    @property
    def url(self) -> str:
        return ADMIN_URL.rsplit("/", 1)[0] + "/" + self.db_name


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
    return env


class Probe:
    """Samples a run: one GROUP BY on the jobs table, the emulator's stats, the host's RSS."""

    def __init__(
        self, ctx: Context, host: WorkerHost | None = None, api: ApiServer | None = None
    ) -> None:
        self.ctx, self.host, self.api, self.queries = ctx, host, api, 0
        self.stalled = False
        self._engine = create_engine(ctx.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self._conn: Connection = self._engine.connect()

    def counts(self) -> tuple[Counter[str], int]:
        self.queries += 1
        counts: Counter[str] = Counter()
        in_flight = 0
        for status, sent, n in self._conn.execute(text(COUNTS_SQL)):
            counts[str(status)] += int(n)
            in_flight += int(n) if status == "running" and sent else 0
        return counts, in_flight

    def sample(self, t0: float) -> Sample:
        counts, in_flight = self.counts()
        emulator_active = active(self.ctx.emulator.summary())
        rss_mb, cpu = (self.host.rss_mb(), self.host.cpu_s()) if self.host else (0.0, 0.0)
        t = time.monotonic() - t0
        machine, emulator_cpu = machine_busy_s(), self.ctx.emulator.cpu_s()
        sample = Sample(t, counts, in_flight, emulator_active, rss_mb, cpu, machine, emulator_cpu)
        if self.api is not None:
            sample.api_rss_mb, sample.api_cpu_s = self.api.rss_mb(), self.api.cpu_s()
        return sample

    def dead(self) -> bool:
        """The worker host (or the API) is gone: waiting longer is pointless."""
        host_dead = self.host is not None and not self.host.alive()
        return host_dead or (self.api is not None and not self.api.alive())

    def watch(self, n: int, t0: float, until: float, stall_s: float | None = None) -> list[Sample]:
        """Every 0.5 s until n jobs are terminal, ``until`` passes or the host died.

        With ``stall_s``: also when no job became terminal for that long (``self.stalled``).
        """
        samples: list[Sample] = []
        every = self.ctx.args.print_every
        next_print = t0 + every
        last_terminal, last_change = -1, t0
        while True:
            tick = time.monotonic()
            sample = self.sample(t0)
            samples.append(sample)
            terminal = sum(v for k, v in sample.counts.items() if k in TERMINAL)
            if terminal != last_terminal:
                last_terminal, last_change = terminal, tick
            self.stalled = stall_s is not None and tick - last_change >= stall_s
            if terminal >= n or tick >= until or self.dead() or self.stalled:
                return samples
            if tick >= next_print:
                api = f" api cpu {sample.api_cpu_s:.1f}s" if self.api is not None else ""
                print(
                    f"  t={sample.t:5.1f}s {dict(sample.counts)} in flight {sample.in_flight_db}"
                    f" (emulator {sample.emulator_active}) rss"
                    f" {sample.rss_mb + sample.api_rss_mb:.0f} MB"
                    f" worker cpu {sample.cpu_s:.1f}s{api}",
                    file=sys.stderr,
                )
                next_print = tick + every
            time.sleep(max(0.0, tick + SAMPLE_EVERY_S - time.monotonic()))

    def times(self, run: Run, until: datetime) -> datetime | None:
        row = self._conn.execute(text(TIMES_SQL), {"until": until}).one()
        run.done, last = int(row[0]), row[1]
        run.span_s = float(row[2] or 0.0)
        run.p50_s, run.p95_s = (None, None) if row[3] is None else (float(row[3]), float(row[4]))
        run.final = self.counts()[0]
        return last

    def timeline(self, latency_s: float) -> list[Second]:
        """Second by second: where a wave's jobs were (the emulator starts a request when it
        arrives, under the account limit the bench sets, so fal is done at sent + latency)."""
        rows = self._conn.execute(text(TIMELINE_SQL), {"latency_s": latency_s})
        return [Second(*map(int, row)) for row in rows]

    def webhooks_stored(self) -> int:
        return int(self._conn.execute(text("SELECT count(*) FROM fal_webhooks")).scalar_one())

    def close(self) -> None:
        self._conn.close()
        self._engine.dispose()


def our_workers(args: argparse.Namespace) -> tuple[list[list[str]], list[str]]:
    cmds, names = [], []
    for i in range(args.processes):
        cmds.append(worker_argv(concurrency=args.threads, name=f"bench{i}@%h", loglevel="WARNING"))
        names.append(f"bench{i}@")
    return cmds, names


def finish_run(ctx: Context, run: Run, probe: Probe, base: tuple[int, int | None]) -> None:
    """After the host stopped: database counters (backends flush them as they exit), logs."""
    run.log_events = log_events(WorkerHost({}, ctx.log_dir).log_text(run.label))
    api_log = ctx.log_dir / API_LOG
    if run.mode == "webhook" and api_log.exists():
        run.api_log_events = log_events(api_log.read_text(errors="replace"))
    probe.close()
    dispose_engines()
    time.sleep(1.0)
    xacts, statements = db_counters(ctx.db_name)
    run.xacts = xacts - base[0] - probe.queries  # the probe's own queries are not the run's
    if statements is not None and base[1] is not None:
        run.statements = statements - base[1] - probe.queries


API_LOG = "api.log"


def start_api(ctx: Context) -> tuple[ApiServer, dict[str, str]]:
    """Webhook mode: `imagegen api` up and healthy; the workers' environment pointing at it."""
    env = dict(ctx.env)
    env.setdefault("IMAGEGEN_API_KEY", uuid.uuid4().hex)  # required; no route here uses it
    api = ApiServer(env, ctx.log_dir / API_LOG).start()
    env["IMAGEGEN_WEBHOOK_URL"] = api.webhook_url
    env.setdefault("IMAGEGEN_WEBHOOK_FALLBACK_S", WEBHOOK_FALLBACK_S)
    return api, env


def run_ours(ctx: Context) -> Run:
    args = ctx.args
    run = Run("ours", args.jobs, mode="webhook" if args.webhook else "polling")
    values: dict[str, Any] = dict(ctx.env)  # Settings takes the environment names
    settings = Settings(**values)
    app = create_app(settings)
    api: ApiServer | None = None
    env = ctx.env
    host = WorkerHost(env, ctx.log_dir)
    try:
        if args.webhook:
            api, env = start_api(ctx)
            host = WorkerHost(env, ctx.log_dir)
        cmds, names = our_workers(args)
        host.start(cmds, run.label)
        host.wait_ready(app, names)
        api_startup = api.cpu_s() if api is not None else 0.0
        run.startup_cpu_s = host.cpu_s() + api_startup
        base = db_counters(ctx.db_name)
        tag = uuid.uuid4().hex[:6]
        t0 = time.monotonic()
        enqueue_many([f"bench job {i} {tag}" for i in range(args.jobs)], settings=settings, app=app)
        run.enqueue_s = time.monotonic() - t0
        probe = Probe(ctx, host, api)
        stall_s = args.stall_after or max(120.0, 3 * args.latency + 60)
        run.samples = probe.watch(args.jobs, t0, t0 + args.timeout, stall_s)
        run.stalled_s = stall_s if probe.stalled else None
        api_cpu = api.cpu_s() if api is not None else 0.0
        run.cpu_s = host.cpu_s() + api_cpu - run.startup_cpu_s
        run.api_cpu_s = api_cpu - api_startup if api is not None else None
        run.emulator = ctx.emulator.stats()
        host.stop()
        if api is not None:
            api.stop()
        finish_run(ctx, run, probe, base)
    finally:
        host.stop()
        if api is not None:
            api.stop()
    probe = Probe(ctx)
    probe.times(run, FOREVER)
    if run.done < run.jobs and run.samples:  # stalled or timed out: over the time watched
        run.span_s = run.samples[-1].t
    run.webhooks_stored = probe.webhooks_stored() if args.webhook else None
    run.timeline = probe.timeline(args.latency) if args.timeline else []
    probe.close()
    return run


def insert_naive_rows(url: str, n: int) -> list[str]:
    ids, now = [uuid.uuid4() for _ in range(n)], utcnow()
    rows = [
        {"id": job_id, "prompt": f"naive bench job {job_id}", "params": {}, "attempts": 0}
        | {"model": naive.MODEL, "status": JobStatus.QUEUED, "created_at": now, "updated_at": now}
        for job_id in ids
    ]
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE jobs, job_attempts"))
        conn.execute(insert(Job), rows)
    engine.dispose()
    return [str(job_id) for job_id in ids]


def naive_worker() -> list[str]:
    # The naive way: default prefork pool, default concurrency (CPU count).
    return [sys.executable, "-m", "celery", "-A", "bench.naive", "worker", "-Q", naive.QUEUE]


def run_naive(ctx: Context) -> Run:
    args, run = ctx.args, Run("naive", ctx.args.jobs, window_s=ctx.args.naive_window)
    ctx.emulator.reset()
    flush_redis(args.redis_url)
    producer = Celery("naive-producer", broker=args.redis_url)
    host = WorkerHost(ctx.env, ctx.log_dir)
    try:
        host.start([[*naive_worker(), "-n", "naive@%h", "-l", "WARNING"]], run.label)
        host.wait_ready(producer, ["naive@"])
        ids = insert_naive_rows(ctx.url, run.jobs)  # created_at: just before the first send
        run.startup_cpu_s = host.cpu_s()
        base = db_counters(ctx.db_name)
        t0, start = time.monotonic(), datetime.now(UTC)
        with producer.producer_or_acquire() as publisher:
            for job_id in ids:
                producer.send_task(naive.TASK, args=[job_id], queue=naive.QUEUE, producer=publisher)
        run.enqueue_s = time.monotonic() - t0
        probe = Probe(ctx, host)
        run.samples = probe.watch(run.jobs, t0, t0 + args.naive_window)
        run.cpu_s = host.cpu_s() - run.startup_cpu_s
        run.emulator = ctx.emulator.stats()
        host.stop(quit_now=True)  # cold shutdown: do not wait out generations in progress
        finish_run(ctx, run, probe, base)
    finally:
        host.stop(quit_now=True)
    naive_times(ctx, run, start)
    return run


def naive_times(ctx: Context, run: Run, start: datetime) -> None:
    """Jobs finished inside the window; all done early: the span from the first send."""
    probe = Probe(ctx)
    window = timedelta(seconds=ctx.args.naive_window)
    last = probe.times(run, start + window)
    probe.close()
    if run.done >= run.jobs and last is not None:
        run.window_s = None
        run.span_s = (last - start).total_seconds()
    else:
        run.span_s = ctx.args.naive_window


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(level=logging.ERROR)
    with one_run_at_a_time(args.redis_url, "bench.throughput") as args.redis_url:
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="imagegen-throughput-"))
    emulator = Emulator(args.latency, args.fal_concurrency, work, args.round_trip)
    db_name = f"imagegen_tp_{uuid.uuid4().hex[:12]}"
    ours: Run | None = None
    naive_run: Run | None = None
    try:
        emulator.start()
        admin_sql(f"CREATE DATABASE {db_name}")
        ctx = Context(args, db_name, emulator, {}, work)
        upgrade(ctx.url)
        flush_redis(args.redis_url)
        ctx.env = worker_env(ctx.url, args.redis_url, emulator, args.fal_concurrency)
        ours = run_ours(ctx)
        naive_run = None if args.skip_naive else run_naive(ctx)
    finally:
        emulator.stop()
        dispose_engines()
        admin_sql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        flush_redis(args.redis_url)
    render(args, ours, naive_run, passed_through(), work)
    if not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def passed_through() -> list[str]:
    return sorted(k for k in os.environ if k.startswith("IMAGEGEN_"))


if __name__ == "__main__":
    sys.exit(main())
