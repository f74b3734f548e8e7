"""Prometheus metrics: counted where things happen, exposed by the API and each worker.

Multiprocess-safe: with ``PROMETHEUS_MULTIPROC_DIR`` set (one directory per host, emptied
at start), every process writes its samples there and whoever serves ``/metrics``
aggregates them. Job counts by status and the queue depth are read from the job table
and Redis when scraped, so they are right whichever process serves them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.constants import JOB_QUEUE
from worker.settings import Settings

JOBS_FINISHED = Counter(
    "imagegen_jobs_finished_total", "Jobs that reached a terminal state.", ["outcome"]
)
REFUSALS = Counter(
    "imagegen_refusals_total", "Refused jobs by category and source.", ["category", "source"]
)
SUBMISSIONS = Counter(
    "imagegen_fal_submissions_total", "Submit POSTs sent to fal (each one may be billed)."
)
RETRIES = Counter("imagegen_job_retries_total", "Runs scheduled again after a transient failure.")
MODERATION_UNAVAILABLE = Counter(
    "imagegen_moderation_unavailable_total",
    "Moderation checks skipped (fail open) or deferred (fail closed): service unavailable.",
    ["source"],
)
CALLBACKS = Counter(
    "imagegen_callbacks_total", "Job-event callbacks to web apps, by result.", ["result"]
)
FAL_LATENCY = Histogram(
    "imagegen_fal_generation_seconds",
    "From fal accepting a submit to the request being COMPLETED.",
    buckets=(1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900),
)
IN_FLIGHT = Gauge(
    "imagegen_jobs_in_flight",
    "Runs working on a job right now (all worker processes).",
    multiprocess_mode="livesum",
)


class _TableCollector(Collector):
    """Job counts by status (the job table) and broker queue depth, read at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from worker import queries
        from worker.db import session_scope

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


def queue_depth(settings: Settings) -> int | None:
    if not settings.redis_url.startswith(("redis", "unix")):
        return None
    from worker.redis_client import shared_redis

    return int(shared_redis(settings.redis_url).llen(JOB_QUEUE))


def _process_registry() -> Any:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition(settings: Settings) -> tuple[bytes, str]:
    """The text exposition: this host's counters plus the table and queue gauges."""
    table = CollectorRegistry()
    table.register(_TableCollector(settings))
    return generate_latest(_process_registry()) + generate_latest(table), CONTENT_TYPE_LATEST


def serve_worker_metrics(port: int) -> None:
    """A worker's own /metrics on ``port`` (IMAGEGEN_METRICS_PORT)."""
    start_http_server(port, addr="0.0.0.0", registry=_process_registry())  # noqa: S104
