"""The processes of an open-loop run: workers, pollers, the API, Flower; all stopped at exit.

Each is started the documented way, logs to its own file and is stopped (SIGTERM, then
SIGKILL of its whole tree) when the run's ``ExitStack`` closes: also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from celery import Celery

from bench import naive
from bench.host import POLLER_CMD, POLLER_READY, ROOT, ApiServer, WorkerHost
from bench.proc import free_port, stop_process
from imagegen.worker.celery_app import worker_argv

NAIVE_CMD = [sys.executable, "-m", "celery", "-A", "bench.naive", "worker", "-Q", naive.QUEUE]


@dataclass
class Flower:
    """``celery -A worker flower`` on a free port, read-only, no auth (127.0.0.1 only)."""

    env: dict[str, str]
    log_path: Path
    max_tasks: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> Flower:
        self.port = free_port()
        env = {k: v for k, v in self.env.items() if not k.startswith("FLOWER_")}
        env["FLOWER_UNAUTHENTICATED_API"] = "true"  # no auth: its API is off without this
        cmd = [sys.executable, "-m", "celery", "-A", "imagegen.worker", "flower"]
        cmd += [f"--port={self.port}", "--address=127.0.0.1", "--persistent=False"]
        cmd += [f"--max_tasks={self.max_tasks}", "--read_only=True"]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=2, trust_env=False) as client:
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Flower did not start (log: {self.log_path})")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/healthcheck").status_code == 200:
                        return self
                time.sleep(0.2)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Every task Flower knows, by task id (its API's /api/tasks)."""
        with httpx.Client(base_url=self.base_url, timeout=120, trust_env=False) as client:
            data: dict[str, dict[str, Any]] = client.get("/api/tasks").raise_for_status().json()
        return data

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@dataclass
class Stack:
    """What one open-loop run started; ``roots`` are the imagegen processes measured."""

    env: dict[str, str]
    log_dir: Path
    stack: contextlib.ExitStack
    workers: WorkerHost | None = None
    pollers: WorkerHost | None = None
    api: ApiServer | None = None
    flower: Flower | None = None
    names: list[str] = field(default_factory=list)

    def roots(self) -> list[int]:
        hosts = [h for h in (self.workers, self.pollers) if h is not None]
        pids = [p.pid for host in hosts for p in host.procs]
        if self.api is not None and self.api.proc is not None:
            pids.append(self.api.proc.pid)
        return pids

    def alive(self) -> bool:
        hosts = [h for h in (self.workers, self.pollers) if h is not None]
        api_ok = self.api is None or self.api.alive()
        return api_ok and all(p.poll() is None for host in hosts for p in host.procs)

    def start_api(self) -> None:
        """Webhook mode: `imagegen api` healthy, and everyone's IMAGEGEN_WEBHOOK_URL at it."""
        self.env.setdefault("IMAGEGEN_API_KEY", uuid.uuid4().hex)  # required; unused here
        self.api = ApiServer(dict(self.env), self.log_dir / "api.log")
        self.stack.callback(self.api.stop)
        self.api.start()
        self.env["IMAGEGEN_WEBHOOK_URL"] = self.api.webhook_url

    def start_flower(self, max_tasks: int) -> None:
        self.flower = Flower(dict(self.env), self.log_dir / "flower.log", max_tasks)
        self.stack.callback(self.flower.stop)
        self.flower.start()

    def start_workers(self, cmds: list[list[str]], names: list[str], *, cold: bool = False) -> None:
        """``cold``: stopped with SIGQUIT (the naive pattern's generations are dropped)."""
        self.workers = WorkerHost(dict(self.env), self.log_dir)
        self.stack.callback(self.workers.stop, quit_now=cold)
        self.workers.start(cmds, "worker")
        self.names = names

    def start_pollers(self, n: int) -> None:
        self.pollers = WorkerHost(dict(self.env), self.log_dir)
        self.stack.callback(self.pollers.stop)
        self.pollers.start([POLLER_CMD] * n, "poller")

    def wait_ready(self, app: Celery) -> None:
        assert self.workers is not None
        self.workers.wait_ready(app, self.names)
        logs = sorted(self.log_dir.glob("poller-*.log")) if self.pollers else []
        deadline = time.monotonic() + 30
        while not all(POLLER_READY in log.read_bytes() for log in logs):
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the pollers did not start (logs in {self.log_dir})")
            time.sleep(0.1)
        if not self.alive():
            raise RuntimeError(f"a process exited at start (logs in {self.log_dir})")


def start(args: argparse.Namespace, env: dict[str, str], log_dir: Path, stack: Any) -> Stack:
    """Everything for ``args``' mode, in order: Flower, API, workers, pollers."""
    run = Stack(dict(env), log_dir, stack)
    if args.naive:
        run.start_workers([[*NAIVE_CMD, "-n", "naive@%h", "-l", "WARNING"]], ["naive@"], cold=True)
        return run
    if args.flower:
        run.start_flower(max_tasks=max(100_000, 4 * round(args.rate * args.duration)))
    if args.webhook:
        run.start_api()
    cmds, names = [], []
    for i in range(args.workers):
        name = f"bench{i}-{os.getpid()}@%h"
        cmds.append(worker_argv(concurrency=args.concurrency, name=name, loglevel="WARNING"))
        names.append(f"bench{i}-{os.getpid()}@")
    run.start_workers(cmds, names)
    if args.pollers:
        run.start_pollers(args.pollers)
    return run
