"""bench.media's measurements: the store stage's copy (``_stored``), timed one at a time, and
many at once with this process's RSS sampled from /proc/self meanwhile.

Each copy is exactly what the store stage does per image: fetch to a temporary file, inspect
with Pillow, ``storage.put_file``, under a fresh job id (so a fresh key).
"""

from __future__ import annotations

import os
import resource
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx

from bench.open_figures import percentile
from bench.proc import rss_kb
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.jobs.store import _stored
from imagegen.worker.media.storage import Storage

RSS_EVERY_S = 0.02


@dataclass(frozen=True)
class CopySettings:
    """The two settings ``_stored`` reads (IMAGEGEN_IMAGE_MAX_BYTES, _DOWNLOAD_TIMEOUT_S)."""

    image_max_bytes: int
    download_timeout_s: float


@dataclass
class CopyDeps:
    """What ``_stored`` takes from Deps: the emulator's files are on 127.0.0.1 (private)."""

    settings: CopySettings
    storage: Storage
    files: httpx.Client
    fal_files_private: bool = True


def copy_one(deps: CopyDeps, url: str, size: int) -> dict[str, Any]:
    """One image copied as the store stage does it; checks the stored length."""
    record = _stored(cast(Deps, deps), uuid.uuid4(), 0, {"url": url})
    if record["bytes"] != size:
        raise RuntimeError(f"copied {record['bytes']} bytes, expected {size}")
    return record


def cpu_s() -> float:
    """This process's CPU seconds (user + system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Sequential:
    """Copies one after another: each one's wall time, and CPU per copy."""

    copy_ms: list[float]
    cpu_ms_per_image: float

    def summary(self, prefix: str) -> dict[str, float | None]:
        return {
            f"{prefix}copy_ms_p50": _round(percentile(self.copy_ms, 0.5)),
            f"{prefix}copy_ms_p95": _round(percentile(self.copy_ms, 0.95)),
            f"{prefix}cpu_ms_per_image": round(self.cpu_ms_per_image, 2),
        }


def copy_sequential(
    deps: CopyDeps, url: str, size: int, count: int, progress: Callable[[str], None]
) -> Sequential:
    copy_one(deps, url, size)  # warm: the emulator's cached image, boto3's client, imports
    times: list[float] = []
    cpu_before = cpu_s()
    for n in range(count):
        start = time.perf_counter()
        copy_one(deps, url, size)
        times.append((time.perf_counter() - start) * 1000)
        if (n + 1) % max(1, count // 4) == 0:
            progress(f"  {n + 1}/{count} copied")
    return Sequential(times, (cpu_s() - cpu_before) * 1000 / max(1, count))


@dataclass
class RssSampler:
    """VmRSS of this process every RSS_EVERY_S, in a thread, between start() and stop()."""

    peak_kb: int = 0
    samples: int = 0
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pid = os.getpid()
        while True:
            self.peak_kb = max(self.peak_kb, rss_kb(pid))
            self.samples += 1
            if self._done.wait(RSS_EVERY_S):
                return

    def stop(self) -> int:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_kb = max(self.peak_kb, rss_kb(os.getpid()))
        return self.peak_kb


@dataclass(frozen=True)
class Concurrent:
    """Many copies at once: this process's RSS before and at its peak, in MB."""

    baseline_mb: float
    peak_mb: float
    wall_s: float
    copy_s: list[float]
    failures: list[str]

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.baseline_mb

    def summary(self, prefix: str) -> dict[str, float | int]:
        return {
            f"{prefix}rss_baseline_mb": round(self.baseline_mb, 1),
            f"{prefix}rss_peak_mb": round(self.peak_mb, 1),
            f"{prefix}rss_growth_mb": round(self.growth_mb, 1),
            f"{prefix}concurrent_wall_s": round(self.wall_s, 2),
            f"{prefix}concurrent_copy_s_max": round(max(self.copy_s, default=0.0), 2),
            f"{prefix}concurrent_failures": len(self.failures),
        }


def copy_concurrent(deps: CopyDeps, url: str, size: int, count: int) -> Concurrent:
    """``count`` threads, one copy each, released together; one shared fetch client."""
    failures: list[str] = []
    copy_s: list[float] = []
    go = threading.Event()

    def one() -> None:
        go.wait()
        start = time.perf_counter()
        try:
            copy_one(deps, url, size)
        except Exception as error:  # counted and reported, the run goes on
            failures.append(f"{type(error).__name__}: {error}")
        copy_s.append(time.perf_counter() - start)  # list.append is atomic

    baseline_kb = rss_kb(os.getpid())  # before the threads: their stacks count as growth
    sampler = RssSampler().start()
    threads = [threading.Thread(target=one, daemon=True, name=f"copy-{n}") for n in range(count)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - start
    peak_kb = sampler.stop()
    return Concurrent(baseline_kb / 1024, peak_kb / 1024, wall_s, copy_s, failures)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
