"""Cancelling a job: one move of the row, and fal told to stop what it has."""

from __future__ import annotations

import uuid

from celery import Celery

from imagegen.models import JobStatus
from imagegen.worker.db import write
from imagegen.worker.errors import FalError, JobNotFound
from imagegen.worker.jobs import state
from imagegen.worker.jobs.dispatch import send_collect
from imagegen.worker.jobs.enqueue import default_app
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.logs import get_logger
from imagegen.worker.settings import Settings, get_settings

log = get_logger(__name__)


def cancel(
    job_id: uuid.UUID, *, settings: Settings | None = None, app: Celery | None = None
) -> str:
    """Cancel a job: a queued one never reaches fal, one at fal gets fal's cancel call.

    Returns the job's status afterwards (``cancelled``, or the terminal status it already
    had). Raises ``JobNotFound`` for an unknown id.
    """
    settings = settings or get_settings()
    moved = write(settings.database_url, lambda db: state.move(db, job_id, "cancel"))
    if moved is None:
        status = state.status_of(settings.database_url, job_id)
        if status is None:
            raise JobNotFound(f"no job with id {job_id}")
        return status.value
    app = app or default_app()
    fire(moved, app)
    if moved.job.fal_request_id is not None:
        _cancel_at_fal(job_id, moved.job.model, moved.job.fal_request_id, settings)
        # no task holds a job at fal: a collect run finds it cancelled, so Flower shows
        # the job's last stage REVOKED
        send_collect(app, job_id, moved.job.attempts)
    return JobStatus.CANCELLED.value


def _cancel_at_fal(job_id: uuid.UUID, model: str, request_id: str, settings: Settings) -> None:
    """fal's cancel call, and the job's fleet slot given back at once: nobody else will (the
    row is terminal, so a COMPLETED heard later moves nothing). A cancel fal refused is a
    request that already finished there."""
    from imagegen.worker.fal.gateway import FalGateway
    from imagegen.worker.fal.limits import FalLimiter

    gateway = FalGateway.from_settings(settings)
    try:
        gateway.cancel(model, request_id)
    except FalError as exc:  # already finished at fal, or unreachable: the row decides
        log.info("fal.cancel_failed", job_id=str(job_id), error=exc.message)
    finally:
        gateway.close()
        FalLimiter.for_settings(settings).release(str(job_id))  # a no-op without a fleet cap
