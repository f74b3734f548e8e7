"""The closed-loop run: N jobs queued at once with ``enqueue_many``, watched until terminal."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.host import POLLER_CMD, ApiServer, Emulator, WorkerHost
from bench.probe import Probe
from bench.report import render
from bench.runs import Context, Run, admin_sql, db_counters, flush_redis, log_events, worker_env
from imagegen.worker.celery_app import create_app, worker_argv
from imagegen.worker.db import dispose_engines, upgrade
from imagegen.worker.jobs.enqueue import enqueue_many
from imagegen.worker.settings import Settings

WEBHOOK_FALLBACK_S = "600"  # longer than any run here: a lost callback shows as a stuck job
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


def our_workers(args: argparse.Namespace) -> tuple[list[list[str]], list[str]]:
    """The host: ``--processes`` workers (``names``: the ones to ping) and ``--pollers``."""
    cmds, names = [], []
    for i in range(args.processes):
        cmds.append(worker_argv(concurrency=args.threads, name=f"bench{i}@%h", loglevel="WARNING"))
        names.append(f"bench{i}@")
    return cmds + [POLLER_CMD] * args.pollers, names


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


def measure(args: argparse.Namespace) -> int:
    """The closed-loop run end to end: services up, the run, everything down, the report."""
    work = Path(tempfile.mkdtemp(prefix="imagegen-throughput-"))
    emulator = Emulator(args.latency, args.fal_concurrency, work, args.round_trip)
    db_name = f"imagegen_tp_{uuid.uuid4().hex[:12]}"
    ours: Run | None = None
    try:
        emulator.start()
        admin_sql(f"CREATE DATABASE {db_name}")
        ctx = Context(args, db_name, emulator, {}, work)
        upgrade(ctx.url)
        flush_redis(args.redis_url)
        ctx.env = worker_env(ctx.url, args.redis_url, emulator, args.fal_concurrency)
        ours = run_ours(ctx)
    finally:
        emulator.stop()
        dispose_engines()
        admin_sql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        flush_redis(args.redis_url)
    render(args, ours, passed_through(), work)
    if not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def passed_through() -> list[str]:
    return sorted(k for k in os.environ if k.startswith("IMAGEGEN_"))
