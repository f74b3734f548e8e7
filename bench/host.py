"""Processes for the benchmarks: the fal emulator, a worker host, the API.

A worker host's RSS and CPU cover every process we started and all their descendants
(prefork children included), read from /proc so that nothing is installed to measure it.
The API (``imagegen api``, fal's webhook receiver in webhook mode) is sampled the same way.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
from celery import Celery

from bench.proc import cpu_s, free_port, process_tree, rss_kb, stop_process
from imagegen.worker.cli.demo import poller_argv
from tests.redis_lease import DATABASES, HOST, PORT, lease_free_db, try_lease

ROOT = Path(__file__).resolve().parents[1]
#: the poller process of path v2 (`imagegen poller`), started like a worker
POLLER_CMD = poller_argv()
POLLER_READY = b"poller.ready"  # its log line once it watches (as tests/conftest.py waits)


@contextlib.contextmanager
def one_run_at_a_time(redis_url: str | None, bench: str) -> Iterator[str]:
    """The Redis database this benchmark may flush, leased like the tests' (tests.redis_lease)
    for the whole run: ``redis_url``'s, refused while another run (a benchmark or a test)
    holds it, or any free one of 1-15. Two runs on one database would delete each other's
    queued tasks (jobs left queued for good)."""
    with redis.Redis(host=HOST, port=PORT, db=0) as locks:
        if redis_url is None:
            lease = lease_free_db(locks, wait_s=0)
            if lease is None:
                raise SystemExit(f"{bench}: every Redis database 1-15 is in use by another run")
        else:
            lease = try_lease(_database(redis_url), locks)
            if lease is None:
                raise SystemExit(
                    f"{bench}: another run is using {redis_url} (a benchmark flushes its "
                    "Redis database); wait for it to finish, or leave out --redis-url"
                )
        try:
            yield lease.url
        finally:
            lease.release()


def _database(redis_url: str) -> int:
    parsed = urlsplit(redis_url)
    path = parsed.path.strip("/")
    db = int(path) if path.isdigit() else 0
    if (parsed.hostname, parsed.port or 6379) != (HOST, PORT) or db not in DATABASES:
        raise SystemExit(f"--redis-url must be a database 1-15 of redis://{HOST}:{PORT}")
    return db


@dataclass
class Emulator:
    """``imagegen fal-emulator`` in its own process (its CPU is not the workers')."""

    latency_s: float
    concurrency: int
    work_dir: Path
    round_trip_s: float = 0.0  # added to every answer: fal over a network, not on localhost
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    base_url: str = ""
    _probe: httpx.Client | None = None

    def start(self) -> Emulator:
        port, log = free_port(), self.work_dir / "emulator.log"
        cmd = [str(Path(sys.executable).parent / "imagegen"), "fal-emulator", "--port", str(port)]
        cmd += ["--latency", f"{self.latency_s:g}", "--concurrency", str(self.concurrency)]
        cmd += ["--cert-dir", str(self.work_dir / "certs")]
        cmd += ["--round-trip", f"{self.round_trip_s:g}"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "# fal emulator" not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start:\n{log.read_text()}")
            time.sleep(0.05)
        for line in log.read_text().splitlines():
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                self.env[name] = shlex.split(value)[0]
        self.base_url = f"https://{self.env['FAL_QUEUE_RUN_HOST']}"
        return self

    def _client(self) -> httpx.Client:
        trust = ssl.create_default_context(cafile=self.env["SSL_CERT_FILE"])
        return httpx.Client(base_url=self.base_url, verify=trust, timeout=30)

    def stats(self) -> dict[str, Any]:
        """Everything, every request included (for the report, once a run ended)."""
        with self._client() as client:
            data: dict[str, Any] = client.get("/_emulator/stats").raise_for_status().json()
        return data

    def summary(self) -> dict[str, Any]:
        """Counters and peaks only, on one kept connection: cheap enough to sample twice
        a second without taking the emulator's CPU (or its lock) from the run measured."""
        if self._probe is None:
            self._probe = self._client()
        data: dict[str, Any] = (
            self._probe.get("/_emulator/stats", params={"summary": "1"}).raise_for_status().json()
        )
        return data

    def reset(self) -> None:
        with self._client() as client:
            client.post("/_emulator/reset").raise_for_status()

    def cpu_s(self) -> float:
        return sum(cpu_s(pid) for pid in process_tree(self.proc.pid)) if self.proc else 0.0

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self.proc is not None:
            stop_process(self.proc)


def active(stats: dict[str, Any]) -> int:
    """Requests queued or running at the emulator."""
    return int(stats["queued"]) + int(stats["in_progress"])


@dataclass
class WorkerHost:
    """Celery worker processes started with ``cmds``; sampled as one host."""

    env: dict[str, str]
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, cmds: list[list[str]], label: str) -> None:
        for i, cmd in enumerate(cmds):
            with (self.log_dir / f"{label}-{i}.log").open("wb") as out:
                self.procs.append(
                    subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=out)
                )

    def wait_ready(self, app: Celery, names: list[str], timeout_s: float = 60) -> None:
        """Until every worker answers a ping (its consumer is running)."""
        deadline, missing = time.monotonic() + timeout_s, set(names)
        while missing:
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready: {sorted(missing)} (logs in {self.log_dir})")
            answered = {node for reply in app.control.ping(timeout=1.0) for node in reply}
            missing -= {prefix for prefix in missing if any(n.startswith(prefix) for n in answered)}

    def pids(self) -> list[int]:
        return [pid for proc in self.procs for pid in process_tree(proc.pid)]

    def rss_mb(self) -> float:
        return sum(rss_kb(pid) for pid in self.pids()) / 1024

    def cpu_s(self) -> float:
        return sum(cpu_s(pid) for pid in self.pids())

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop(self, *, quit_now: bool = False) -> None:
        """SIGTERM (warm shutdown), or SIGQUIT (cold: tasks in progress are dropped)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT if quit_now else signal.SIGTERM)
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()

    def log_text(self, label: str) -> str:
        logs = sorted(self.log_dir.glob(f"{label}-*.log"))
        return "\n".join(log.read_text(errors="replace") for log in logs)


@dataclass
class ApiServer:
    """``imagegen api`` (one uvicorn process) on a free port: fal's webhook receiver."""

    env: dict[str, str]
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/fal/webhook"

    def start(self, timeout_s: float = 60) -> ApiServer:
        """Start it and wait until ``/healthz`` answers 200 (Postgres and Redis reachable)."""
        self.port = free_port()
        cmd = [str(Path(sys.executable).parent / "imagegen"), "api"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=2, trust_env=False) as client:
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log_path.read_text(errors="replace")
                    raise RuntimeError(f"the API did not start:\n{log}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/healthz").status_code == 200:
                        return self
                time.sleep(0.1)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc is not None else []

    def rss_mb(self) -> float:
        return sum(rss_kb(pid) for pid in self.pids()) / 1024

    def cpu_s(self) -> float:
        return sum(cpu_s(pid) for pid in self.pids())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
