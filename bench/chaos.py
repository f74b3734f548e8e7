"""A repeatable chaos run of the real pipeline: workers SIGKILLed while fal misbehaves.

`python -m bench.chaos [--jobs 300] [--workers 3] [--seed N] [--latency 1.0] [--kill-every 4.0]
[--timeout 600]`: a fresh Postgres database, Redis db 14 flushed, the fal emulator in-process,
jobs whose prompts carry random fault directives, Celery workers as subprocesses (one SIGKILLed
and replaced every few seconds; `sweep` every 2 s stands in for celery beat), then invariants
checked against what the emulator saw. Exit code 0 only when every invariant holds.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import text

from bench.chaos_checks import Drive, Scenario, check, collect, console, draw_scenario, render
from bench.chaos_mass import mass_kill
from bench.host import one_run_at_a_time
from bench.runs import admin_sql, db_url, flush_redis

# None of these imports fal-client (worker.tasks and worker.fal.gateway do; never imported here).
from imagegen.worker.celery_app import create_app, worker_argv
from imagegen.worker.db import dispose_engines, get_engine, upgrade
from imagegen.worker.fal.emulator import FalEmulator
from imagegen.worker.jobs.enqueue import enqueue
from imagegen.worker.jobs.sweeper import sweep
from imagegen.worker.logs import configure
from imagegen.worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = frozenset({"succeeded", "refused", "failed", "cancelled"})
SWEEP_EVERY_S = 2.0
FAST_ENV = {
    "IMAGEGEN_BACKOFF_BASE_S": "0.2",
    "IMAGEGEN_BACKOFF_CAP_S": "2",
    "IMAGEGEN_POLL_INITIAL_S": "0.2",
    "IMAGEGEN_POLL_MAX_S": "1",
    "IMAGEGEN_SUBMIT_TIMEOUT_S": "3",
    "IMAGEGEN_POLL_TIMEOUT_S": "3",
    "IMAGEGEN_LEASE_S": "4",
    "IMAGEGEN_QUEUED_GRACE_S": "8",
    "IMAGEGEN_MAX_ATTEMPTS": "5",
    "IMAGEGEN_GENERATION_TIMEOUT_S": "60",
}


@dataclass
class Fleet:
    """The worker subprocesses; SIGKILLs one at a time and starts replacements."""

    env: dict[str, str]
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0
    kills: int = 0
    crashes: int = 0
    logs: dict[int, str] = field(default_factory=dict)  # pid -> its log file's name

    def start(self) -> None:
        name = f"chaos{self.started}-{uuid.uuid4().hex[:6]}@%h"
        cmd = worker_argv(concurrency=16, name=name, loglevel="WARNING")
        log = self.log_dir / f"worker-{self.started:03d}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=out)
        self.procs.append(proc)
        self.logs[proc.pid] = log.name
        self.started += 1

    def kill_one(self, rng: random.Random) -> None:
        alive = [p for p in self.procs if p.poll() is None]
        if alive:
            victim = rng.choice(alive)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            with (self.log_dir / "kills.log").open("a") as log:
                stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
                log.write(f"{stamp} SIGKILL {self.logs[victim.pid]} (pid {victim.pid})\n")
            self.procs.remove(victim)
            self.kills += 1
        self.start()

    def replace_dead(self) -> None:
        for proc in [p for p in self.procs if p.poll() is not None]:
            self.procs.remove(proc)
            self.crashes += 1
            self.start()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=None, help="3 (--mass-kill: 2)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--latency", type=float, default=None, help="s: 1 (--mass-kill: 60)")
    parser.add_argument("--kill-every", type=float, default=4.0, help="mean s between kills")
    parser.add_argument("--timeout", type=float, default=600.0, help="s to wait for all jobs")
    parser.add_argument("--keep-logs", action="store_true", help="keep worker logs on success")
    mass = parser.add_argument_group("mass kill (the default settings)")
    mass.add_argument(
        "--mass-kill",
        action="store_true",
        help="SIGKILL all at once, restart (see bench/chaos_mass.py)",
    )
    mass.add_argument("--in-flight", type=int, default=2000, help="jobs at fal at the kill")
    mass.add_argument("--queued", type=int, default=None, help="more behind them (in-flight/4)")
    mass.add_argument("--threads", type=int, default=32, help="each worker's concurrency")
    args = parser.parse_args(argv)
    args.workers = args.workers or (2 if args.mass_kill else 3)
    args.latency = args.latency if args.latency is not None else 60.0 if args.mass_kill else 1.0
    args.queued = args.in_flight // 4 if args.queued is None else args.queued
    return args


def enqueue_all(args: argparse.Namespace, settings: Settings, app: Celery) -> dict[str, Scenario]:
    rng, tag = random.Random(args.seed), uuid.uuid4().hex[:6]
    jobs: dict[str, Scenario] = {}
    for i in range(args.jobs):
        scenario = draw_scenario(rng)
        prompt = f"chaos job {i} {tag} {scenario.kind}"
        if scenario.directive is not None:
            prompt += f" [[fal:{scenario.directive}]]"
        jobs[str(enqueue(prompt, quality="low", settings=settings, app=app))] = scenario
    return jobs


def drive(args: argparse.Namespace, settings: Settings, app: Celery, fleet: Fleet) -> Drive:
    """Sweep, kill and replace workers until every job is terminal or the timeout."""
    rng, report, start = random.Random(args.seed + 1), Drive(), time.monotonic()
    next_kill, next_sweep, next_print = start + args.kill_every, start, start + 10.0
    while True:
        now = time.monotonic()
        if now >= next_sweep:
            swept, next_sweep = sweep(settings, app), now + SWEEP_EVERY_S
            report.sweeps += 1
            report.republished += len(swept.republished)
            report.expired += len(swept.expired)
        with get_engine(settings.database_url).connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status"))
            counts = Counter({str(status): int(n) for status, n in rows})
        report.elapsed_s = now - start
        if sum(n for status, n in counts.items() if status in TERMINAL) >= args.jobs:
            return report
        if report.elapsed_s > args.timeout:
            report.timed_out = True
            return report
        if now >= next_kill:
            fleet.kill_one(rng)
            next_kill = now + args.kill_every * rng.uniform(0.5, 1.5)
        fleet.replace_dead()
        if now >= next_print:
            progress = f"t={report.elapsed_s:4.0f}s {dict(counts)} kills={fleet.kills}"
            console.print(progress, style="dim", soft_wrap=True, highlight=False)
            next_print = now + 10.0
        time.sleep(0.25)


def run(args: argparse.Namespace, url: str, emulator: FalEmulator, log_dir: Path) -> int:
    env = {"DATABASE_URL": url, "REDIS_URL": args.redis_url, "FAL_KEY": "chaos-key", **FAST_ENV}
    env.update(emulator.env())
    values: dict[str, Any] = dict(env)  # Settings takes the environment names as keywords
    settings = Settings(**values)
    app = create_app(settings)
    fleet = Fleet({**os.environ, **env}, log_dir)
    try:
        for _ in range(args.workers):
            fleet.start()
        jobs = enqueue_all(args, settings, app)
        console.print(f"enqueued {len(jobs)} jobs (seed {args.seed}); worker logs in {log_dir}")
        report = drive(args, settings, app, fleet)
    finally:
        fleet.stop()
    facts = collect(url, jobs, emulator)
    invariants = check(facts, args.jobs)
    render(invariants, facts, fleet, report)
    return 1 if any(inv.verdict == "FAIL" for inv in invariants) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(level=logging.ERROR)  # the sweeper's warnings would drown the output
    with one_run_at_a_time(None, "bench.chaos") as args.redis_url:
        if args.mass_kill:
            return mass_kill(args)
        return chaos(args)


def chaos(args: argparse.Namespace) -> int:
    name = f"imagegen_chaos_{uuid.uuid4().hex[:12]}"
    log_dir = Path(tempfile.mkdtemp(prefix="imagegen-chaos-"))
    emulator = FalEmulator(latency_s=args.latency).start()
    os.environ.update(emulator.env())  # before anything imports fal-client
    code = 2
    try:
        admin_sql(f"CREATE DATABASE {name}")
        upgrade(db_url(name))
        flush_redis(args.redis_url)
        code = run(args, db_url(name), emulator, log_dir)
        return code
    finally:
        emulator.stop()
        dispose_engines()
        admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        flush_redis(args.redis_url)
        if code == 0 and not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            console.print(f"worker logs kept in {log_dir}")


if __name__ == "__main__":
    sys.exit(main())
