"""The Celery task: a thin shell around ``worker.pipeline.run_job``."""

from __future__ import annotations

import uuid
from functools import lru_cache

from celery import Task
from sqlalchemy.exc import DBAPIError

from worker.account import AccountGuard
from worker.celery_app import app
from worker.constants import RUN_JOB_TASK, SWEEP_TASK
from worker.fal_gateway import PerThreadGateway
from worker.fleet import FalLimiter
from worker.pipeline import RetryLater, Runtime, run_job
from worker.retry import RetryPolicy
from worker.settings import get_settings
from worker.sweeper import sweep


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """The process's collaborators, built on first use (after fork, in prefork pools)."""
    settings = get_settings()
    return Runtime(
        settings=settings,
        gateway=PerThreadGateway(settings),
        policy=RetryPolicy.from_settings(settings),
        guard=AccountGuard.for_url(app.conf.broker_url or "", settings.account_lock_ttl_s),
        limiter=FalLimiter.for_url(
            app.conf.broker_url or "", limit=settings.fal_concurrency, lease_s=settings.lease_s
        ),
    )


@app.task(
    name=RUN_JOB_TASK,
    bind=True,
    acks_late=True,
    max_retries=None,
    # The database was unreachable for longer than worker.db.write waits: run again later;
    # the row (and its fal request id) says where to resume.
    autoretry_for=(DBAPIError,),
    retry_backoff=5,
    retry_backoff_max=120,
)
def run_job_task(self: Task, job_id: str) -> str:
    """Load the job, submit or resume, wait, record; retry transient failures later."""
    outcome = run_job(uuid.UUID(job_id), runtime(), task_retries=self.request.retries)
    if isinstance(outcome, RetryLater):
        raise self.retry(countdown=outcome.delay_s, max_retries=None)
    return outcome.summary


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep_task() -> str:
    """Re-publish jobs whose broker message was lost (run by celery beat)."""
    report = sweep(get_settings(), app)
    return f"republished {len(report.republished)}, expired {len(report.expired)}"
