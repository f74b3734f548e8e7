"""The Celery tasks: thin shells around the stages in ``worker.jobs``.

Each holds a worker thread for milliseconds to a few seconds (one POST, one GET), never for
fal's latency: worker concurrency is ordinary Celery sizing.
"""

from __future__ import annotations

import threading
import uuid
from functools import lru_cache

import httpx
from celery import Task
from celery.signals import worker_ready
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imagegen.worker import metrics
from imagegen.worker.celery_app import app
from imagegen.worker.constants import (
    CALLBACK_TASK,
    COLLECT_TASK,
    COOLDOWN_TASK,
    PURGE_TASK,
    STORE_TASK,
    SUBMIT_TASK,
    SWEEP_TASK,
)
from imagegen.worker.db import open_pool
from imagegen.worker.errors import ConfigurationError, JobFailed
from imagegen.worker.fal.account import AccountGuard
from imagegen.worker.fal.gateway import FalGateway
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.jobs import collect, store, submit
from imagegen.worker.jobs.callbacks import CallbackFailed, CallbackRejected, deliver
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.jobs.retry import RetryPolicy
from imagegen.worker.jobs.sweeper import sweep_or_skip
from imagegen.worker.logs import get_logger
from imagegen.worker.media.setup import media_deps
from imagegen.worker.moderation.setup import moderation_chain
from imagegen.worker.settings import get_settings
from imagegen.worker.task_states import task_result

_lock = threading.Lock()


def deps() -> Deps:
    """The process's collaborators, built once on first use (after fork, in prefork)."""
    with _lock:
        return _build_deps()


@lru_cache(maxsize=1)
def _build_deps() -> Deps:
    settings = get_settings()
    broker = app.conf.broker_url or ""
    return Deps(
        settings=settings,
        gateway=FalGateway.from_settings(settings),
        limiter=FalLimiter.for_url(
            broker,
            limit=settings.fal_concurrency,
            # a slot is held while fal has the request: past any generation (released
            # when COMPLETED is heard; a submit run again re-takes the same slot)
            lease_s=settings.generation_timeout_s,
            patient=True,
        ),
        guard=AccountGuard.for_url(broker, settings.account_lock_ttl_s, patient=True),
        policy=RetryPolicy.from_settings(settings),
        app=app,
        moderation=moderation_chain(settings, announce=True),
        **media_deps(settings),
    )


@worker_ready.connect
def _warm_up(**_: object) -> None:
    """Open a few Postgres connections and the fal client before the first messages."""
    settings = deps().settings
    opened = open_pool(settings.database_url)
    get_logger(__name__).info("worker.warmed", db_connections=opened)


#: the database was unreachable for longer than worker.db.write waits: run again later;
#: the row says where to resume
_STAGE = {
    "bind": True,
    "acks_late": True,
    "max_retries": None,
    "autoretry_for": (DBAPIError, PoolTimeout),
    "retry_backoff": 5,
    "retry_backoff_max": 120,
    "throws": (JobFailed,),  # a job that failed: one log line from Celery, no traceback
}


@app.task(name=SUBMIT_TASK, **_STAGE)
def submit_task(self: Task, job_id: str) -> str:
    """Pre-filter, fal slot, POST, request id recorded: the job is at fal (or ended)."""
    outcome = submit.run(uuid.UUID(job_id), deps(), retries=self.request.retries)
    return task_result(self, outcome)


@app.task(name=COLLECT_TASK, **_STAGE)
def collect_task(self: Task, job_id: str) -> str:
    """fal finished the request: read the answer, record the outcome (Flower shows it)."""
    outcome = collect.run(uuid.UUID(job_id), deps(), retries=self.request.retries)
    return task_result(self, outcome)


@app.task(name=STORE_TASK, **_STAGE)
def store_task(self: Task, job_id: str) -> str:
    """fal's images: copied to our storage, then the job ends succeeded (Flower shows it)."""
    outcome = store.run(uuid.UUID(job_id), deps(), retries=self.request.retries)
    return task_result(self, outcome)


def _callback_http() -> httpx.Client:
    with _lock:  # one client per process, however many threads ask first
        return _build_callback_http()


@lru_cache(maxsize=1)
def _build_callback_http() -> httpx.Client:
    return httpx.Client(timeout=get_settings().callback_timeout_s, follow_redirects=False)


#: about 2 h of tries with backoff capped at 10 min (like fal's own webhook redelivery)
CALLBACK_MAX_RETRIES = 15


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
        attempt = self.request.retries + 1
        result = deliver(uuid.UUID(job_id), get_settings(), _callback_http(), attempt)
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
    """The backstop (run by celery beat): lost messages, silent requests, deadlines."""
    report = sweep_or_skip(get_settings(), app)
    if report is None:
        return "skipped: the database or the broker is unreachable (the next pass retries)"
    return report.summary()


@app.task(name=PURGE_TASK, ignore_result=True)
def purge_task() -> str:
    """Retention (celery beat, daily, when IMAGEGEN_*_RETENTION_DAYS is set)."""
    from imagegen.worker.media.retention import purge_from_settings
    from imagegen.worker.media.setup import storage_for

    settings = get_settings()
    report = purge_from_settings(settings, storage_for(settings.storage_url))
    get_logger(__name__).info("purge.done", **report.as_dict())
    return str(report.as_dict())


@app.task(name=COOLDOWN_TASK, bind=True, acks_late=True, autoretry_for=(DBAPIError,))
def cooldown_task(self: Task, tenant_id: str, end_user: str | None) -> str:
    """After a refusal: start a repeat-offender cool-down when the refusals reach the limit
    (the result says whom it stops and until when: Flower shows it)."""
    from imagegen.worker.tenants.cooldown import after_refusal

    started = after_refusal(get_settings(), uuid.UUID(tenant_id), end_user)
    if started is None:
        return "no cool-down"
    metrics.COOLDOWNS.labels(tenant_id).inc()
    who = f"end user {end_user!r}" if end_user is not None else "the tenant"
    get_logger(__name__).warning(
        "cooldown.started", tenant_id=tenant_id, refusals=started.refusals, until=str(started.until)
    )
    return f"cooldown: {who} of tenant {tenant_id} until {started.until.isoformat()}"
