"""The fair share of the fleet cap, measured: ``python -m bench.fairness``.

Fleet cap 20, emulator latency 10 s (2 slot starts a second), two worker processes and a
poller. Tenant A enqueues 2,000 jobs at once; a second later B enqueues 50; C enqueues 5
every 10 s. One worker is SIGKILLed mid-run and replaced. The run is watched for
``--duration`` seconds, then the same run is made with IMAGEGEN_FAIR_SHARE=false (plain
FIFO) for comparison. A's first ``cap`` jobs finish at latency x k / cap (k = 1..cap), so
that the run starts in the steady state of 2 slot starts a second: with all 20 finishing
together at 10 s, no slot would free before t = 10 s for any scheduler. The last line is
one JSON object: the fair run's figures at the top level (b_share, b_first_submit_s,
c_submit_wait_p95_s, cap_utilisation, slots_leaked), both
runs under ``fair`` and ``fifo``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from bench.fairness_figures import Samples, Window, figures, held_by_table
from bench.host import POLLER_CMD, Emulator, WorkerHost, one_run_at_a_time
from bench.proc import process_tree
from bench.runs import admin_sql, flush_redis, worker_env
from imagegen.models import utcnow
from imagegen.worker.celery_app import create_app, worker_argv
from imagegen.worker.db import dispose_engines, upgrade
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.jobs.enqueue import enqueue_many
from imagegen.worker.settings import Settings
from imagegen.worker.tenants.keys import create_tenant

TARGETS = {
    "b_share": (">=", 0.30),
    "b_first_submit_s": ("<=", 2.0),
    "c_submit_wait_p95_s": ("<=", 5.0),
    "cap_utilisation": (">=", 0.95),
    "slots_leaked": ("<=", 0),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    parser.add_argument("--cap", type=int, default=20, help="IMAGEGEN_FAL_CONCURRENCY")
    parser.add_argument("--latency", type=float, default=10.0, help="emulator latency (s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker")
    parser.add_argument("--a-jobs", type=int, default=2000)
    parser.add_argument("--b-jobs", type=int, default=50)
    parser.add_argument("--b-after", type=float, default=1.0, help="B enqueues after (s)")
    parser.add_argument("--c-jobs", type=int, default=5, help="C enqueues this many ...")
    parser.add_argument("--c-every", type=float, default=10.0, help="... every this often (s)")
    parser.add_argument("--duration", type=float, default=150.0, help="watched per run (s)")
    parser.add_argument("--kill-at", type=float, default=40.0, help="SIGKILL a worker (s; 0: no)")
    parser.add_argument("--lease", type=float, default=30.0, help="IMAGEGEN_LEASE_S")
    parser.add_argument("--no-fifo", action="store_true", help="skip the FIFO comparison")
    parser.add_argument("--redis-url", default=None, help="a database 1-15 (default: a free one)")
    parser.add_argument("--keep-logs", action="store_true")
    return parser.parse_args(argv)


def _host_cmds(args: argparse.Namespace, tag: str) -> list[list[str]]:
    cmds = [
        worker_argv(concurrency=args.threads, name=f"fair{tag}{i}@%h", loglevel="WARNING")
        for i in range(args.workers)
    ]
    return [*cmds, POLLER_CMD]


def _sampler(
    env: dict[str, str], t0: float, stop: threading.Event, samples: Samples, lease_s: float
) -> None:
    limiter = FalLimiter.for_url(env["REDIS_URL"], limit=int(env["IMAGEGEN_FAL_CONCURRENCY"]),
                                 lease_s=lease_s)  # fmt: skip
    engine = create_engine(env["DATABASE_URL"], poolclass=NullPool)
    try:
        with engine.connect() as db:
            while not stop.wait(0.25):
                held = limiter.in_flight()
                table = held_by_table(db, lease_s)
                db.rollback()
                samples.rows.append((time.monotonic() - t0, held, table))
    finally:
        engine.dispose()


def _enqueue(
    settings: Settings,
    app: Any,
    tenant: str,
    n: int,
    tag: str,
    stagger: int = 0,
    latency_s: float = 0.0,
) -> None:
    """``stagger``: the first that many finish at latency x k / stagger (see the docstring)."""
    items = [{"prompt": f"{tenant} job {i} {tag}", "tenant": tenant} for i in range(n)]
    for k, item in enumerate(items[:stagger]):
        item["prompt"] += f" [[fal:ok+latency:{latency_s * (k + 1) / stagger:.2f}]]"
    enqueue_many(items, settings=settings, app=app)


def _load(args: argparse.Namespace, settings: Settings, app: Any, t0: float) -> None:
    """B after ``--b-after`` s, C every ``--c-every`` s until the end (A is already in)."""
    tag = uuid.uuid4().hex[:6]
    next_b, next_c, c_round = t0 + args.b_after, t0, 0
    while (now := time.monotonic()) < t0 + args.duration:
        if next_b is not None and now >= next_b:
            _enqueue(settings, app, "b", args.b_jobs, tag)
            next_b = None
        if now >= next_c:
            _enqueue(settings, app, "c", args.c_jobs, f"{tag}-{c_round}")
            c_round, next_c = c_round + 1, next_c + args.c_every
        time.sleep(0.02)


def _kill_one(host: WorkerHost, args: argparse.Namespace) -> None:
    """SIGKILL the first worker's whole process tree, and start a replacement."""
    victim = host.procs[0]
    for pid in process_tree(victim.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    victim.wait()
    host.start([_host_cmds(args, "r")[0]], "replacement")


def one_run(args: argparse.Namespace, redis_url: str, fair: bool, work: Path) -> dict[str, Any]:
    db_name = f"imagegen_fair_{uuid.uuid4().hex[:10]}"
    emulator = Emulator(args.latency, max(args.cap * 4, 100), work)
    host: WorkerHost | None = None
    try:
        emulator.start()
        admin_sql(f"CREATE DATABASE {db_name}")
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"
        upgrade(url)
        flush_redis(redis_url)
        env = worker_env(url, redis_url, emulator, args.cap)
        env.update(IMAGEGEN_FAIR_SHARE=str(fair).lower(), IMAGEGEN_LEASE_S=f"{args.lease:g}")
        settings = Settings(**env)  # type: ignore[arg-type]
        for name in ("a", "b", "c"):
            create_tenant(url, name)
        app = create_app(settings)
        host = WorkerHost(env, work)
        label = "fair" if fair else "fifo"
        host.start(_host_cmds(args, label), label)
        host.wait_ready(app, [f"fair{label}{i}@" for i in range(args.workers)])
        return _watch(args, settings, app, host, env)
    finally:
        if host is not None:
            host.stop()
        emulator.stop()
        dispose_engines()
        admin_sql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        flush_redis(redis_url)


def _watch(
    args: argparse.Namespace, settings: Settings, app: Any, host: WorkerHost, env: dict[str, str]
) -> dict[str, Any]:
    samples, stop = Samples(), threading.Event()
    start = utcnow()
    t0 = time.monotonic()
    _enqueue(settings, app, "a", args.a_jobs, uuid.uuid4().hex[:6], args.cap, args.latency)
    sampler = threading.Thread(target=_sampler, args=(env, t0, stop, samples, args.lease))
    loader = threading.Thread(target=_load, args=(args, settings, app, t0))
    sampler.start()
    loader.start()
    kill_t = None
    if args.kill_at > 0:
        time.sleep(max(0.0, t0 + args.kill_at - time.monotonic()))
        _kill_one(host, args)
        kill_t = time.monotonic() - t0
    loader.join()
    stop.set()
    sampler.join()
    window = Window(start, utcnow(), kill_t, args.lease)
    return figures(settings.database_url, samples, window, args.cap)


def _met(result: dict[str, Any]) -> dict[str, bool | None]:
    met: dict[str, bool | None] = {}
    for key, (op, target) in TARGETS.items():
        value = result.get(key)
        met[key] = None if value is None else (value >= target if op == ">=" else value <= target)
    return met


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="imagegen-fairness-"))
    with one_run_at_a_time(args.redis_url, "bench.fairness") as redis_url:
        fair = one_run(args, redis_url, True, work)
        fifo = None if args.no_fifo else one_run(args, redis_url, False, work)
    result = {key: fair.get(key) for key in TARGETS}
    result.update(targets_met=_met(fair), fair=fair, fifo=fifo, logs=str(work))
    print(json.dumps(fair, indent=2))
    if not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)
        result["logs"] = None
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
