"""Prometheus metrics: counted where things happen, each served only by the role that owns it.

A worker serves what its runs count (``WORKER``) on ``IMAGEGEN_WORKER_METRICS_PORT``; the
HTTP API serves what it counts (``API``: requests, enqueues) and the job counts by status
and queue depth, read from the job table and Redis when scraped, on ``/metrics``. Neither
exports the other's metrics as zeros.

Multiprocess-safe: with ``PROMETHEUS_MULTIPROC_DIR`` set (one directory per host, emptied
at start), every process writes its samples there and whoever serves aggregates them,
keeping only the metrics its role owns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from imagegen.worker.constants import FAL_COOLDOWN_KEY, JOB_QUEUE, NEXT_QUEUE
from imagegen.worker.settings import Settings

#: what a worker's runs count
WORKER = CollectorRegistry()
#: what the HTTP API (and the Python enqueue it calls) counts
API = CollectorRegistry()

JOBS_FINISHED = Counter(
    "imagegen_jobs_finished_total",
    "Jobs that reached a terminal state.",
    ["outcome"],
    registry=WORKER,
)
REFUSALS = Counter(
    "imagegen_refusals_total",
    "Refused jobs by category and source.",
    ["category", "source"],
    registry=WORKER,
)
SUBMISSIONS = Counter(
    "imagegen_fal_submissions_total",
    "Submit POSTs sent to fal (each one may be billed).",
    registry=WORKER,
)
RETRIES = Counter(
    "imagegen_job_retries_total",
    "Runs scheduled again after a transient failure.",
    registry=WORKER,
)
MODERATION_UNAVAILABLE = Counter(
    "imagegen_moderation_unavailable_total",
    "Moderation checks skipped (fail open) or deferred (fail closed): service unavailable.",
    ["source"],
    registry=WORKER,
)
CALLBACKS = Counter(
    "imagegen_callbacks_total",
    "Job-event callbacks to web apps, by result.",
    ["result"],
    registry=WORKER,
)
COOLDOWNS = Counter(
    "imagegen_cooldowns_started_total",
    "Repeat-offender cool-downs started, by tenant id.",
    ["tenant_id"],
    registry=WORKER,
)
SPEND = Counter(
    "imagegen_spend_usd_total",
    "What fal billed for ended jobs, where known (units x unit price), by tenant id.",
    ["tenant_id"],
    registry=WORKER,
)
SLOT_GRANTS = Counter(
    "imagegen_slot_grants_total",
    "fal slots granted to a waiting job while the fleet was at its cap, by tenant id.",
    ["tenant_id"],
    registry=WORKER,
)
IMAGES_STORED = Counter(
    "imagegen_jobs_images_stored_total",
    "Succeeded jobs by whether their images were copied to storage (false: fal's URLs kept).",
    ["stored"],
    registry=WORKER,
)
FAL_COOLDOWNS = Counter(
    "imagegen_fal_cooldowns_total",
    "429s from fal, each starting (or extending) the fleet-wide submit cool-down.",
    registry=WORKER,
)
FAL_LATENCY = Histogram(
    "imagegen_fal_generation_seconds",
    "From fal accepting a submit to the request being COMPLETED.",
    buckets=(1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900),
    registry=WORKER,
)
IN_FLIGHT = Gauge(
    "imagegen_jobs_in_flight",
    "Runs working on a job right now (all worker processes).",
    multiprocess_mode="livesum",
    registry=WORKER,
)

ENQUEUED = Counter(
    "imagegen_jobs_enqueued_total",
    "Jobs enqueued by this process (published, or written waiting for a fal slot).",
    registry=API,
)
HTTP_REQUESTS = Counter(
    "imagegen_http_requests_total",
    "API requests by method, route template and status.",
    ["method", "route", "status"],
    registry=API,
)
HTTP_DURATION = Histogram(
    "imagegen_http_request_duration_seconds",
    "API request handling time by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=API,
)


class _TableCollector(Collector):
    """Job counts by status (the job table), broker queue depth and the fleet's 429
    cool-down, read at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from imagegen.worker.db import session_scope
        from imagegen.worker.jobs import queries

        jobs = GaugeMetricFamily("imagegen_jobs", "Jobs in the table by status.", labels=["status"])
        with session_scope(self._settings.database_url) as session:
            counts = queries.stats(session=session)
        for status, count in counts["by_status"].items():
            jobs.add_metric([status], count)
        yield jobs
        depth = queue_depth(self._settings)
        if depth is not None:
            yield GaugeMetricFamily(
                "imagegen_queue_depth", "Messages waiting in the imagegen queue.", value=depth
            )
        cooling = fal_cooldown_s(self._settings)
        if cooling is not None:
            yield GaugeMetricFamily(
                "imagegen_fal_cooldown_seconds",
                "Seconds left of the fleet-wide submit cool-down after a 429 (0: none).",
                value=cooling,
            )


class _Owned(Collector):
    """The metric families of one role, from this process or from every process's files."""

    def __init__(self, owned: CollectorRegistry) -> None:
        self._owned = owned
        self._names = {family.name for family in owned.collect()}

    def collect(self) -> Iterable[Metric]:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            yield from self._owned.collect()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                yield from collector.collect()
            return
        for family in multiprocess.MultiProcessCollector(None).collect():
            if family.name in self._names:
                yield family


def role_registry(owned: CollectorRegistry) -> CollectorRegistry:
    """What a role serves: its own metrics (plus process metrics in single-process mode)."""
    registry = CollectorRegistry()
    registry.register(_Owned(owned))
    return registry


def queue_depth(settings: Settings) -> int | None:
    if not settings.redis_url.startswith(("redis", "unix")):
        return None
    from imagegen.worker.redis_client import shared_redis

    client = shared_redis(settings.redis_url)
    return int(client.llen(JOB_QUEUE)) + int(client.llen(NEXT_QUEUE))


def fal_cooldown_s(settings: Settings) -> float | None:
    """What is left of the cool-down every worker honours (worker.fal.limits), in Redis."""
    if not settings.redis_url.startswith(("redis", "unix")):
        return None
    from imagegen.worker.redis_client import shared_redis

    until = shared_redis(settings.redis_url).get(FAL_COOLDOWN_KEY)
    return max(float(until) - time.time(), 0.0) if until else 0.0


def api_exposition(settings: Settings) -> tuple[bytes, str]:
    """The API's text exposition: its own counters plus the table and queue gauges."""
    table = CollectorRegistry()
    table.register(_TableCollector(settings))
    payload = generate_latest(role_registry(API)) + generate_latest(table)
    return payload, CONTENT_TYPE_LATEST


def serve_worker_metrics(port: int) -> None:
    """A worker's own /metrics on ``port`` (IMAGEGEN_WORKER_METRICS_PORT), all interfaces:
    Prometheus scrapes each worker container on the internal network."""
    start_http_server(port, addr="0.0.0.0", registry=role_registry(WORKER))  # noqa: S104


def process_gone() -> None:
    """A prefork child exits: its live gauges (jobs in flight) stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())
