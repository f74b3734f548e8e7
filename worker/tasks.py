"""The Celery task: a thin shell around ``worker.pipeline.run_job``."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from functools import lru_cache

import httpx
from celery import Task
from celery.concurrency.thread import TaskPool as ThreadsPool
from celery.exceptions import Ignore
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from worker import metrics
from worker.account import AccountGuard
from worker.callbacks import CallbackFailed, CallbackRejected, deliver
from worker.celery_app import app
from worker.constants import CALLBACK_TASK, RUN_JOB_TASK, SWEEP_TASK
from worker.db import open_pool
from worker.errors import ConfigurationError, JobFailed, JobRetrying
from worker.fal_gateway import GatewayPool
from worker.fleet import FalLimiter
from worker.logs import get_logger
from worker.moderation_setup import moderation_chain
from worker.pipeline import Done, Gauge, RetryLater, Runtime, run_job
from worker.recorder import RecorderThreads
from worker.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from worker.retry import RetryPolicy
from worker.settings import get_settings
from worker.sweeper import sweep_or_skip
from worker.task_states import HandedOver, announce_recorded, task_result

_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The process's collaborators, built on first use (after fork, in prefork pools).

    Under a lock: a fresh threads-pool worker starts many tasks at once, and lru_cache
    alone let each of them build its own Runtime (its own latency estimate and scouts,
    gateway pool and turnstile).
    """
    with _runtime_lock:
        return _build_runtime()


@lru_cache(maxsize=1)
def _build_runtime() -> Runtime:
    settings = get_settings()
    generating = Gauge()
    recorder = None
    if settings.recorder_threads:
        recorder = RecorderThreads.for_settings(settings, generating, _follow_up, _handed_over)
    return Runtime(
        settings=settings,
        gateway=GatewayPool(settings),
        policy=RetryPolicy.from_settings(settings),
        guard=AccountGuard.for_url(
            app.conf.broker_url or "", settings.account_lock_ttl_s, patient=True
        ),
        limiter=FalLimiter.for_url(
            app.conf.broker_url or "",
            limit=settings.fal_concurrency,
            lease_s=settings.lease_s,
            patient=True,
        ),
        moderation=moderation_chain(settings, announce=True),
        recorder=recorder,
        generating=generating,
    )


def _handed_over() -> HandedOver:
    return HandedOver.current(run_job_task)


def _follow_up(
    job_id: uuid.UUID,
    outcome: Done | RetryLater,
    task_retries: int,
    handed: HandedOver,
) -> None:
    """What ``run_job_task`` does with an outcome, for one a recorder thread reached."""
    announce_recorded(handed, outcome)
    if isinstance(outcome, RetryLater):
        run_job_task.apply_async(
            args=[str(job_id)],
            task_id=str(job_id),
            countdown=outcome.delay_s,
            retries=task_retries + 1,
        )
    elif outcome.notify:
        callback_task.apply_async(args=[str(job_id)])


@worker_ready.connect
def _warm_up(sender: object = None, **_: object) -> None:
    """Threads pool: build the runtime and open its Postgres and fal clients before the first
    burst of messages, which would otherwise pay for them (a prefork child builds its own)."""
    if not isinstance(getattr(sender, "pool", None), ThreadsPool):
        return
    rt = runtime()
    sys.setswitchinterval(rt.settings.gil_switch_interval_s)
    if isinstance(rt.gateway, GatewayPool):
        rt.gateway.fill()
    opened = open_pool(rt.settings.database_url)
    get_logger(__name__).info(
        "worker.warmed",
        db_connections=opened,
        gil_switch_interval_s=round(sys.getswitchinterval(), 6),
    )


@worker_shutdown.connect
def _drain_recorder(**_: object) -> None:
    if _build_runtime.cache_info().currsize:
        recorder = runtime().recorder
        if isinstance(recorder, RecorderThreads):
            recorder.shutdown()


#: about 2 h of tries with backoff capped at 10 min (like fal's own webhook redelivery)
CALLBACK_MAX_RETRIES = 15


@app.task(
    name=RUN_JOB_TASK,
    bind=True,
    acks_late=True,
    max_retries=None,
    # The database was unreachable for longer than worker.db.write waits: run again later;
    # the row (and its fal request id) says where to resume.
    autoretry_for=(DBAPIError, PoolTimeout),
    retry_backoff=5,
    retry_backoff_max=120,
    throws=(JobFailed,),  # a job that failed: one log line from Celery, no traceback
)
def run_job_task(self: Task, job_id: str) -> str:
    """Load the job, submit or resume, wait, record; retry transient failures later.

    The task's state tells Flower what the job did (see ``worker.task_states``).
    """
    self.request.imagegen_started = time.monotonic()  # for a recorder thread's runtime
    try:
        outcome = run_job(uuid.UUID(job_id), runtime(), task_retries=self.request.retries)
    except REDIS_UNAVAILABLE as exc:  # past the retries worker.redis_client logs, one a line
        get_logger(__name__).warning(
            "job.redis_unavailable",
            job_id=job_id,
            error=str(exc),
            action="left to its lease; the sweeper publishes it again",
        )
        raise Ignore() from None
    if isinstance(outcome, RetryLater):
        raise self.retry(
            exc=JobRetrying(outcome.reason), countdown=outcome.delay_s, max_retries=None
        )
    if outcome.notify:
        callback_task.apply_async(args=[job_id])
    return task_result(self, outcome)


def _callback_http() -> httpx.Client:
    with _runtime_lock:  # one client per process, however many threads ask first
        return _build_callback_http()


@lru_cache(maxsize=1)
def _build_callback_http() -> httpx.Client:
    return httpx.Client(timeout=get_settings().callback_timeout_s, follow_redirects=False)


@app.task(
    name=CALLBACK_TASK,
    bind=True,
    acks_late=True,
    autoretry_for=(CallbackFailed, DBAPIError),
    max_retries=CALLBACK_MAX_RETRIES,
    retry_backoff=2,
    retry_backoff_max=600,  # far below the visibility timeout (see celery_app)
    retry_jitter=True,
)
def callback_task(self: Task, job_id: str) -> str:
    """POST the finished job to its web app's callback_url (signed); retried with backoff."""
    log = get_logger(__name__).bind(job_id=job_id)
    try:
        result = deliver(uuid.UUID(job_id), get_settings(), _callback_http())
    except CallbackRejected as exc:
        metrics.CALLBACKS.labels("rejected").inc()
        log.warning("callback.rejected", error=str(exc))
        return f"rejected: {exc}"
    except CallbackFailed as exc:
        metrics.CALLBACKS.labels("failed").inc()
        final = self.request.retries >= CALLBACK_MAX_RETRIES
        log.warning(
            "callback.failed", error=str(exc), attempt=self.request.retries + 1, final=final
        )
        raise
    except ConfigurationError as exc:
        log.error("callback.not_configured", error=str(exc))
        return f"not sent: {exc}"
    metrics.CALLBACKS.labels("delivered").inc()
    log.info("callback.delivered", result=result)
    return result


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep_task() -> str:
    """Re-publish jobs whose broker message was lost (run by celery beat)."""
    report = sweep_or_skip(get_settings(), app)
    if report is None:
        return "skipped: the database or the broker is unreachable (the next pass retries)"
    return f"republished {len(report.republished)}, expired {len(report.expired)}"
