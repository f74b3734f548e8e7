"""Publishing a job's next stage, and the one handler for "fal finished this request".

Task ids: a job's first submit task has the job's id (Celery's retries keep it); each later
submission, each collect and each store gets its own (``<job id>/submit-<n>``,
``<job id>/collect-<n>``, ``<job id>/store-<n>``, n = the attempt), so Flower shows one
row per stage run and the last one holds the outcome.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from celery import Celery
from sqlalchemy import Connection

from imagegen.models import utcnow
from imagegen.worker.constants import COLLECT_TASK, NEXT_QUEUE, STORE_TASK, SUBMIT_TASK
from imagegen.worker.db import write
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.jobs import fairshare, state
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.logs import get_logger
from imagegen.worker.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from imagegen.worker.settings import Settings

log = get_logger(__name__)
#: how long a collect may take to be picked up before it is published again
COLLECT_PUBLISH_GRACE_S = 30.0


def submit_task_id(job_id: uuid.UUID, attempts: int) -> str:
    return str(job_id) if attempts == 0 else f"{job_id}/submit-{attempts + 1}"


def collect_task_id(job_id: uuid.UUID, attempt: int) -> str:
    return f"{job_id}/collect-{attempt}"


def send_submit(
    app: Celery, job_id: uuid.UUID, attempts: int, countdown: float = 0.0, *, granted: bool = False
) -> None:
    """Publish the job's next submit (``attempts``: submissions counted so far); ``granted``:
    it holds a fal slot kept for it (``worker.jobs.fairshare``), not behind new submits."""
    app.send_task(
        SUBMIT_TASK,
        args=[str(job_id)],
        task_id=submit_task_id(job_id, attempts),
        countdown=countdown or None,
        **({"queue": NEXT_QUEUE} if granted else {}),
    )


def send_collect(app: Celery, job_id: uuid.UUID, attempt: int) -> None:
    app.send_task(COLLECT_TASK, args=[str(job_id)], task_id=collect_task_id(job_id, attempt))


def store_task_id(job_id: uuid.UUID, attempt: int) -> str:
    return f"{job_id}/store-{attempt}"


def send_store(app: Celery, job_id: uuid.UUID, attempt: int) -> None:
    app.send_task(STORE_TASK, args=[str(job_id)], task_id=store_task_id(job_id, attempt))


def heard_completed(
    settings: Settings,
    app: Celery,
    limiter: FalLimiter,
    job_id: uuid.UUID,
    *,
    also: state.Also | None = None,
) -> bool:
    """fal finished the job's request (poller, webhook or sweeper heard it): at_fal ->
    collecting, give back the fal slot (granted to a waiting job, if any: the fair share),
    publish the collect. False when another caller won.

    ``also``: more writes for the same transaction (the webhook stores fal's body).
    """

    def work(db: Connection) -> state.Moved | None:
        if also is not None:
            also(db)
        # until the collect takes it: past this, the poller or the sweeper publishes it again
        until = utcnow() + timedelta(seconds=COLLECT_PUBLISH_GRACE_S)
        return state.move(db, job_id, "completed", values={"lease_until": until})

    moved = write(settings.database_url, work)
    if moved is None:
        return False
    fire(moved, app)
    try:
        send_collect(app, job_id, moved.job.attempts)
    except Exception as exc:  # Redis is away: the short lease above brings it back
        log.warning("collect.not_published", job_id=str(job_id), error=str(exc))
        return True
    try:
        limiter.release(str(job_id))
    except REDIS_UNAVAILABLE as exc:  # the slot's lease runs out instead
        log.warning("fleet.slot_not_released", job_id=str(job_id), error=str(exc))
    fairshare.grant(settings, app, limiter)
    return True
