"""The Celery task: a thin shell around ``worker.pipeline.run_job``."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial

import httpx
from celery import Task
from celery.concurrency.thread import TaskPool as ThreadsPool
from celery.signals import worker_ready, worker_shutdown
from celery.worker import state as worker_state
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from worker import metrics
from worker.account import AccountGuard
from worker.callbacks import CallbackFailed, CallbackRejected, deliver
from worker.celery_app import app
from worker.constants import CALLBACK_TASK, RUN_JOB_TASK, SWEEP_TASK
from worker.db import open_pool
from worker.errors import ConfigurationError
from worker.fal_gateway import GatewayPool
from worker.fleet import FalLimiter
from worker.logs import get_logger
from worker.moderation_setup import moderation_chain
from worker.pipeline import Done, Gauge, RetryLater, Runtime, run_job, settle
from worker.retry import RetryPolicy
from worker.settings import Settings, get_settings
from worker.sweeper import sweep

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
    recorder = _Recorder.for_settings(settings, generating) if settings.recorder_threads else None
    return Runtime(
        settings=settings,
        gateway=GatewayPool(settings),
        policy=RetryPolicy.from_settings(settings),
        guard=AccountGuard.for_url(app.conf.broker_url or "", settings.account_lock_ttl_s),
        limiter=FalLimiter.for_url(
            app.conf.broker_url or "", limit=settings.fal_concurrency, lease_s=settings.lease_s
        ),
        moderation=moderation_chain(settings, announce=True),
        recorder=recorder,
        generating=generating,
    )


#: when a recorder thread found the database unreachable: run the job again this much later
RECORDER_DB_RETRY_S = 5.0


def _threads_held_by_generations(generating: Gauge) -> Callable[[], bool]:
    """Do task messages this process reserved (Celery's prefetch) wait for a thread while
    at least a quarter of its runs wait on fal generations? Then a run that fal has
    finished gives its thread to the next message. (With generations as short as their
    bookkeeping, as at a local emulator with no latency, the threads are busy with that
    bookkeeping, not held by fal: handing it over would only add to it.)"""

    def busy() -> bool:  # (the run asking has just stopped waiting on fal: count it in)
        active = len(worker_state.active_requests)
        held = generating.value + 1
        return len(worker_state.reserved_requests) > active and 4 * held >= active

    return busy


class _Recorder:
    """``worker.pipeline.Recorder`` on threads of this worker process.

    A saturated process (prefetched task messages wait for a thread) would otherwise hear
    COMPLETED from a wave of requests and spend its threads reading results, checking images
    and writing rows while the next wave's messages wait: fal slots stay empty meanwhile.
    Here a run gives its thread back as soon as fal said COMPLETED and its fal slot is free,
    and these threads record the outcomes; while messages still wait for a thread, a
    recording waits too (at most ``defer_s``), so the CPU goes to the next wave's submits
    and the rows are written after them. The task's result (what Flower shows) is then
    ``recording``; the job row has the outcome, as always.

    Recording waits on fal's round trips (the result, the image check), tens to hundreds of
    milliseconds each over a network: enough threads to keep many in flight, and at most
    ``queue`` runs waiting for one; past that a run records itself, in its own thread.
    """

    def __init__(
        self,
        threads: int,
        *,
        queue: int | None = None,
        defer_s: float = 0.0,
        busy: Callable[[], bool],
    ) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imagegen-recorder")
        #: runs handed over and not recorded yet, at most ``queue``
        self._places = threading.BoundedSemaphore(max(queue or threads, threads))
        self._defer_s, self._busy = defer_s, busy
        self._closing = False

    @classmethod
    def for_settings(cls, settings: Settings, generating: Gauge) -> _Recorder:
        return cls(
            settings.recorder_threads,
            queue=settings.recorder_queue,
            defer_s=settings.record_defer_s,
            busy=_threads_held_by_generations(generating),
        )

    def wanted(self) -> bool:
        return self._busy() and self._places.acquire(blocking=False)

    def take(
        self,
        job_id: uuid.UUID,
        finish: Callable[[], Done | RetryLater],
        *,
        callback_url: str | None,
        task_retries: int,
    ) -> None:
        record = partial(_record, job_id, finish, callback_url, task_retries)
        try:
            self._pool.submit(self._in_turn, record, time.monotonic() + self._defer_s)
        except RuntimeError:  # shut down already: give the place back
            self._places.release()
            raise

    def _in_turn(self, record: Callable[[], None], latest: float) -> None:
        try:
            while not self._closing and self._busy():
                left = latest - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, _DEFER_CHECK_S))
            record()
        finally:
            self._places.release()

    def shutdown(self) -> None:
        """Record every outcome already handed over, now (a warm shutdown waits for them)."""
        self._closing = True
        self._pool.shutdown(wait=True)


#: how often a deferred recording looks again whether task messages still wait
_DEFER_CHECK_S = 0.25


def _record(
    job_id: uuid.UUID,
    finish: Callable[[], Done | RetryLater],
    callback_url: str | None,
    task_retries: int,
) -> None:
    """Finish a handed-over run and do what the task would have done with its outcome."""
    log = get_logger(__name__).bind(job_id=str(job_id))
    try:
        try:
            outcome = finish()
        except (DBAPIError, PoolTimeout) as exc:  # as the task's autoretry would
            log.warning("recorder.database_unreachable", error=type(exc).__name__)
            outcome = RetryLater(RECORDER_DB_RETRY_S, "the database is unreachable")
        _follow_up(job_id, settle(outcome, callback_url), task_retries)
    except Exception:  # the lease runs out and the sweeper republishes the job
        log.exception("recorder.failed")


def _follow_up(job_id: uuid.UUID, outcome: Done | RetryLater, task_retries: int) -> None:
    """What ``run_job_task`` does with an outcome, for one a recorder thread reached."""
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
        if isinstance(recorder, _Recorder):
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
)
def run_job_task(self: Task, job_id: str) -> str:
    """Load the job, submit or resume, wait, record; retry transient failures later."""
    outcome = run_job(uuid.UUID(job_id), runtime(), task_retries=self.request.retries)
    if isinstance(outcome, RetryLater):
        raise self.retry(countdown=outcome.delay_s, max_retries=None)
    if outcome.notify:
        callback_task.apply_async(args=[job_id])
    return outcome.summary


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
    report = sweep(get_settings(), app)
    return f"republished {len(report.republished)}, expired {len(report.expired)}"
