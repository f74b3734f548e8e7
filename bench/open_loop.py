"""The open-loop run (issue 22): arrivals at a fixed rate, sampled every second, drained.

Fresh services each run: the emulator (``imagegen fal-emulator``, HTTPS, its own process,
account limit C), a migrated Postgres database, the leased Redis database flushed. The
imagegen processes measured (workers, pollers, the API in webhook mode) are sampled from
/proc; the bench process (arrivals, sampling) and Flower are not counted. See
docs/throughput.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from bench import arrivals, open_stack
from bench.host import Emulator, active
from bench.open_figures import TERMINAL, JobFacts, Outcome, Tick, flower_outcomes_missing, summary
from bench.proc import CpuLedger, tree_cpu, tree_rss_mb
from bench.runs import admin_sql, db_url, flush_redis, worker_env
from imagegen.worker.celery_app import create_app
from imagegen.worker.db import dispose_engines, upgrade
from imagegen.worker.settings import Settings
from imagegen.worker.tenants.keys import create_tenant

SAMPLE_EVERY_S = 1.0
BENCH_APP = "imagegen-bench"  # application_name of the bench's own connections
PG_SQL = """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
AND backend_type = 'client backend' AND application_name IS DISTINCT FROM :bench"""
STATUS_SQL = "SELECT status::text, count(*) FROM jobs GROUP BY 1"
FACTS_SQL = """
SELECT j.id::text, j.prompt, j.status::text, extract(epoch FROM j.created_at) - :t0,
  extract(epoch FROM j.finished_at) - :t0, extract(epoch FROM min(a.started_at)) - :t0,
  count(a.id)
FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id GROUP BY j.id
"""


class Sampler:
    """One Tick a second: emulator counters, /proc of the imagegen trees, Postgres."""

    def __init__(self, url: str, emulator: Emulator, run: open_stack.Stack) -> None:
        self.emulator, self.run = emulator, run
        self.ledger = CpuLedger()
        self._engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self._conn: Connection = self._engine.connect()
        self.ticks: list[Tick] = []

    def cpu_s(self) -> float:
        return self.ledger.update(tree_cpu(self.run.roots()))

    def statuses(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self._conn.execute(text(STATUS_SQL))}

    def tick(self, t0: float) -> Tick:
        roots = self.run.roots()
        pg = int(self._conn.execute(text(PG_SQL), {"bench": BENCH_APP}).scalar_one())
        tick = Tick(
            t=time.monotonic() - t0,
            in_flight=active(self.emulator.summary()),
            cpu_s=self.cpu_s(),
            emulator_cpu_s=self.emulator.cpu_s(),
            rss_mb=tree_rss_mb(roots),
            pg_connections=pg,
            statuses=self.statuses(),
        )
        self.ticks.append(tick)
        return tick

    def facts(self, t0_wall: float) -> list[JobFacts]:
        rows = self._conn.execute(text(FACTS_SQL), {"t0": t0_wall})
        return [JobFacts(i, p, s, float(c), _f(f), _f(a), int(n)) for i, p, s, c, f, a, n in rows]

    def close(self) -> None:
        self._conn.close()
        self._engine.dispose()


def _f(value: Any) -> float | None:
    return None if value is None else float(value)


def progress(tick: Tick, sent: int) -> None:
    print(
        f"  t={tick.t:6.1f}s enqueued {sent} {dict(tick.statuses)} at fal {tick.in_flight}"
        f" rss {tick.rss_mb:.0f} MB cpu {tick.cpu_s:.1f}s pg {tick.pg_connections}",
        file=sys.stderr,
    )


def watch(args: argparse.Namespace, sampler: Sampler, load: arrivals.Arrivals) -> bool:
    """Sample through the arrivals and the drain; True when every job ended in time."""
    drain_s = args.drain_timeout or 2 * args.latency + 60
    next_print, drain_until = load.t0 + args.print_every, None
    while True:
        now = time.monotonic()
        tick = sampler.tick(load.t0)
        if load.error is not None:
            raise RuntimeError("the arrivals failed") from load.error
        if not sampler.run.alive():
            raise RuntimeError(f"a measured process died (logs in {sampler.run.log_dir})")
        ended = sum(n for s, n in tick.statuses.items() if s in TERMINAL)
        if load.done:
            drain_until = drain_until or now + (0 if args.naive else drain_s)
            if ended >= len(load.ids) or now >= drain_until:
                return ended >= len(load.ids)
        if now >= next_print:
            progress(tick, len(load.ids))
            next_print = now + args.print_every
        time.sleep(max(0.0, now + SAMPLE_EVERY_S - time.monotonic()))


def flower_missing(run: open_stack.Stack, jobs: list[JobFacts], wait_s: float = 30) -> int:
    """Jobs whose outcome Flower does not show; waits (bounded) for its events to arrive."""
    assert run.flower is not None
    statuses = {j.id: j.status for j in jobs}
    deadline, missing = time.monotonic() + wait_s, list(statuses)
    while missing and time.monotonic() < deadline:
        missing = flower_outcomes_missing(statuses, run.flower.tasks())
        time.sleep(2.0 if missing else 0)
    return len(missing)


def settings_for(env: dict[str, str]) -> Settings:
    """The bench's own Settings (arrivals): its connections named, so none is counted."""
    values: dict[str, Any] = dict(env)  # Settings takes the environment names
    values["DATABASE_URL"] = env["DATABASE_URL"] + f"?application_name={BENCH_APP}"
    return Settings(**values)


def run_once(
    args: argparse.Namespace, emulator: Emulator, env: dict[str, str], work: Path
) -> dict[str, Any]:
    settings = settings_for(env)
    with contextlib.ExitStack() as stack:
        run = open_stack.start(args, env, work, stack)
        if args.naive:
            app = Celery("naive-producer", broker=args.redis_url)
            send = arrivals.naive_sink(settings.database_url, app)
        else:
            app = create_app(settings)
            names = [f"t{i:03d}" for i in range(getattr(args, "tenants", 0) or 0)]
            for name in names:
                create_tenant(settings.database_url, name)
            send = arrivals.ours(settings, app, names)
        run.wait_ready(app)
        sampler = Sampler(settings.database_url, emulator, run)
        stack.callback(sampler.close)
        load = arrivals.Arrivals(args.rate, args.duration, send)
        stack.callback(load.stop)
        cpu0, emulator0 = sampler.cpu_s(), emulator.cpu_s()
        t0_wall, t0 = time.time(), time.monotonic()
        load.begin(t0)
        drained = watch(args, sampler, load)
        cpu_s, emulator_cpu_s = sampler.cpu_s() - cpu0, emulator.cpu_s() - emulator0
        jobs = sampler.facts(t0_wall)
        missing = flower_missing(run, jobs) if run.flower is not None else None
        stats = emulator.stats()
    outcome = Outcome(
        mode="naive" if args.naive else "webhook" if args.webhook else "polling",
        enqueued=load.ids,
        cpu_s=cpu_s,
        emulator_cpu_s=emulator_cpu_s,
        requests=stats["requests"],
        by_prompt=stats["submissions_by_prompt"],
        flower_missing=missing,
        drained=None if args.naive else drained,  # naive: time-boxed, not drained
        extra=extra_figures(args, load, stats),
    )
    return summary(args, outcome, sampler.ticks, jobs)


def extra_figures(
    args: argparse.Namespace, load: arrivals.Arrivals, stats: dict[str, Any]
) -> dict[str, Any]:
    return {
        "workers": 1 if args.naive else args.workers,
        "concurrency": None if args.naive else args.concurrency,
        "pollers": 0 if args.naive else args.pollers,
        "fleet_cap": args.fleet_cap or args.fal_concurrency,
        "tenants": getattr(args, "tenants", 0) or 0,
        "arrival_max_lag_s": round(load.max_lag_s, 3),
        "emulator_submissions": int(stats.get("submissions_total", 0)),
        "emulator_status_polls": int(stats.get("status_polls_total", 0)),
        "emulator_in_progress_peak": int(stats.get("in_progress_peak", 0)),
        "webhooks_sent": int(stats.get("webhooks_sent", 0)),
        "webhooks_failed": int(stats.get("webhooks_failed", 0)),
    }


def measure(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="imagegen-open-loop-"))
    emulator = Emulator(args.latency, args.fal_concurrency, work, args.round_trip)
    db_name = f"imagegen_ol_{uuid.uuid4().hex[:12]}"
    try:
        emulator.start()
        admin_sql(f"CREATE DATABASE {db_name}")
        upgrade(db_url(db_name))
        flush_redis(args.redis_url)
        cap = args.fleet_cap or args.fal_concurrency
        env = worker_env(db_url(db_name), args.redis_url, emulator, cap)
        data = run_once(args, emulator, env, work)
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    finally:
        emulator.stop()
        dispose_engines()
        admin_sql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        flush_redis(args.redis_url)
    if args.keep_logs or data["drained"] is False:
        print(f"logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(data), flush=True)
    return 1 if data["drained"] is False else 0
