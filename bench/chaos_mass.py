"""The mass kill of issue 22: every worker and the poller SIGKILLed at once, restarted at once.

`python -m bench.chaos --mass-kill [--in-flight 2000] [--queued 500] [--latency 60]
[--workers 2] [--threads 32] [--timeout 600]`: the fal emulator in its own process, a fresh
Postgres database, the leased Redis database flushed, and the DEFAULT settings (the caller's
IMAGEGEN_* dropped; only the services are named). N workers (``worker_argv``) and one poller
run; the bench sweeps at IMAGEGEN_SWEEP_INTERVAL_S (60 s), as celery beat would. Once
``--in-flight`` jobs are at fal, ``--queued`` more are enqueued (queued, prefetched or being
submitted at the kill), then every worker and the poller get SIGKILL together and are started
again. The last line is one JSON object: lost, duplicate_submissions, drain_after_restart_s
(restart -> the last job terminal), latency_s and within_target (<= 120 s + latency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import text

from bench.chaos_checks import TERMINAL, Scenario, collect, console, mass_figures
from bench.host import POLLER_CMD, POLLER_READY, Emulator, WorkerHost
from bench.proc import process_tree
from bench.runs import admin_sql, db_url, flush_redis
from imagegen.worker.celery_app import create_app, worker_argv
from imagegen.worker.db import dispose_engines, get_engine, upgrade
from imagegen.worker.jobs.enqueue import enqueue_many
from imagegen.worker.jobs.sweeper import sweep_or_skip
from imagegen.worker.settings import Settings

OK = Scenario("ok", None, "succeeded")
BATCH = 500  # jobs per enqueue_many transaction
STATUS_SQL = "SELECT status::text, count(*) FROM jobs GROUP BY 1"
LAST_SQL = "SELECT extract(epoch FROM max(finished_at)) FROM jobs WHERE finished_at >= :t"


def default_env(url: str, redis_url: str, emulator: Emulator) -> dict[str, str]:
    """The default settings: no IMAGEGEN_* of the caller, only the services pointed at."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env.update(DATABASE_URL=url, REDIS_URL=redis_url, FAL_KEY="chaos-key", **emulator.env)
    # stored images in a temporary directory, not the working directory
    env.setdefault(
        "IMAGEGEN_STORAGE_URL", "file:" + tempfile.mkdtemp(prefix="imagegen-bench-images-")
    )
    return env


class Sweeper:
    """`sweep()` every IMAGEGEN_SWEEP_INTERVAL_S, first one interval after the start (beat)."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings, self.app, self.passes = settings, app, 0
        self.next = time.monotonic() + settings.sweep_interval_s

    def maybe(self) -> None:
        if time.monotonic() >= self.next:
            sweep_or_skip(self.settings, self.app)
            self.passes += 1
            self.next = time.monotonic() + self.settings.sweep_interval_s


def start_fleet(args: argparse.Namespace, env: dict[str, str], logs: Path, gen: int) -> WorkerHost:
    """N workers and one poller, started together (not waited for)."""
    cmds = [
        worker_argv(concurrency=args.threads, name=f"mass{gen}-{i}-{os.getpid()}@%h")
        for i in range(args.workers)
    ]
    host = WorkerHost(dict(env), logs)
    host.start([*cmds, POLLER_CMD], f"gen{gen}")
    return host


def wait_ready(args: argparse.Namespace, host: WorkerHost, app: Celery, gen: int) -> None:
    names = [f"mass{gen}-{i}-{os.getpid()}@" for i in range(args.workers)]
    host.wait_ready(app, names)
    poller_log = host.log_dir / f"gen{gen}-{args.workers}.log"
    deadline = time.monotonic() + 30
    while POLLER_READY not in poller_log.read_bytes():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the poller did not start ({poller_log})")
        time.sleep(0.1)


def kill_all(host: WorkerHost) -> None:
    """SIGKILL to every process of the fleet (and any child) in one sweep, then reap."""
    for pid in [pid for proc in host.procs for pid in process_tree(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for proc in host.procs:
        proc.wait()
    host.procs.clear()


def counts(settings: Settings) -> dict[str, int]:
    with get_engine(settings.database_url).connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(text(STATUS_SQL))}


def add_jobs(n: int, tag: str, settings: Settings, app: Celery) -> list[str]:
    prompts = [f"mass kill job {i} {tag}" for i in range(n)]
    ids: list[str] = []
    for i in range(0, n, BATCH):
        ids += [str(j) for j in enqueue_many(prompts[i : i + BATCH], settings=settings, app=app)]
    return ids


def until(
    done: Callable[[dict[str, int]], bool],
    settings: Settings,
    sweeper: Sweeper,
    timeout_s: float,
    label: str,
) -> dict[str, int]:
    """Sweep and sample once a second until ``done(counts)`` or the timeout."""
    start, next_print = time.monotonic(), time.monotonic() + 10
    while True:
        sweeper.maybe()
        now_counts = counts(settings)
        if done(now_counts) or time.monotonic() - start > timeout_s:
            return now_counts
        if time.monotonic() >= next_print:
            console.print(f"{label} t={time.monotonic() - start:4.0f}s {now_counts}", style="dim")
            next_print = time.monotonic() + 10
        time.sleep(1.0)


def drive(args: argparse.Namespace, env: dict[str, str], logs: Path, emu: Emulator) -> int:
    values: dict[str, Any] = dict(env)  # Settings takes the environment names
    settings, tag = Settings(**values), uuid.uuid4().hex[:6]
    app = create_app(settings)
    host = start_fleet(args, env, logs, 0)
    try:
        wait_ready(args, host, app, 0)
        sweeper = Sweeper(settings, app)
        ids = add_jobs(args.in_flight, tag, settings, app)
        fill_s = 0.8 * args.latency  # the first ones complete at L: kill before
        reached = until(
            lambda c: c.get("at_fal", 0) >= args.in_flight, settings, sweeper, fill_s, "filling"
        )
        ids += add_jobs(args.queued, tag + "q", settings, app)
        time.sleep(1.0)  # some prefetched or mid-submit at the kill, the rest still queued
        at_kill = counts(settings)
        kill_all(host)
        restart = time.time()
        host = start_fleet(args, env, logs, 1)
        console.print(f"killed and restarted at {reached.get('at_fal', 0)} at fal: {at_kill}")
        end = until(
            lambda c: sum(n for s, n in c.items() if s in TERMINAL) >= len(ids),
            settings,
            sweeper,
            args.timeout,
            "after restart",
        )
        alive = all(p.poll() is None for p in host.procs)
    finally:
        host.stop()
    with get_engine(settings.database_url).connect() as conn:
        last = conn.execute(text(LAST_SQL), {"t": _utc(restart)}).scalar_one()
    facts = collect(settings.database_url, dict.fromkeys(ids, OK), emu)
    data = mass_figures(
        facts, len(ids), None if last is None else float(last) - restart, args.latency
    )
    data |= {
        "at_fal_at_kill": at_kill.get("at_fal", 0),
        "statuses_at_kill": at_kill,
        "statuses_at_end": end,
        "workers": args.workers,
        "threads": args.threads,
        "sweeps": sweeper.passes,
        "restarted_alive": alive,
    }
    print(json.dumps(data), flush=True)
    return 0 if data["within_target"] and data["duplicate_submissions"] == 0 else 1


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def mass_kill(args: argparse.Namespace) -> int:
    logs = Path(tempfile.mkdtemp(prefix="imagegen-mass-kill-"))
    jobs = args.in_flight + args.queued
    emulator = Emulator(args.latency, max(10_000, 2 * jobs), logs)
    name, code = f"imagegen_mass_{uuid.uuid4().hex[:12]}", 2
    try:
        emulator.start()
        admin_sql(f"CREATE DATABASE {name}")
        upgrade(db_url(name))
        flush_redis(args.redis_url)
        code = drive(args, default_env(db_url(name), args.redis_url, emulator), logs, emulator)
        return code
    finally:
        emulator.stop()
        dispose_engines()
        admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        flush_redis(args.redis_url)
        if code == 0 and not args.keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            console.print(f"logs kept in {logs}")
