"""What hangs off a job's moves: metrics, a log line, the web app's callback.

A stage calls ``fire(moved, app)`` after its transaction commits; listeners never write the
job row. ``app``: the Celery app of the caller, for what a move publishes (the callback).
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from imagegen.models import TERMINAL_STATUSES, JobStatus
from imagegen.worker import metrics
from imagegen.worker.constants import CALLBACK_TASK, COOLDOWN_TASK
from imagegen.worker.jobs.state import Moved
from imagegen.worker.logs import get_logger, prompt_hash

log = get_logger("imagegen.worker.jobs")
Listener = Callable[[Moved, Celery | None], None]
LISTENERS: list[Listener] = []


def listen(listener: Listener) -> Listener:
    if listener not in LISTENERS:
        LISTENERS.append(listener)
    return listener


def fire(moved: Moved, app: Celery | None = None) -> None:
    for listener in LISTENERS:
        try:
            listener(moved, app)
        except Exception:  # a listener's failure must not undo or repeat the move
            log.exception("hook.failed", listener=getattr(listener, "__name__", "?"))


@listen
def _count(moved: Moved, _app: Celery | None) -> None:
    job = moved.job
    ended_at_fal = moved.move.name in ("collected", "refuse", "fail") or (
        moved.move.name == "succeed" and job.images_stored is None
    )
    if ended_at_fal and job.submitted_at is not None:
        # a collect ended it (only a request at fal has submitted_at): a worker observes
        # it, in poll and webhook mode alike
        metrics.FAL_LATENCY.observe(max(0.0, (moved.at - job.submitted_at).total_seconds()))
    if job.status in TERMINAL_STATUSES:
        metrics.JOBS_FINISHED.labels(job.status.value).inc()
        if job.billed_cost_usd is not None:
            metrics.SPEND.labels(str(job.tenant_id)).inc(float(job.billed_cost_usd))
        if job.images_stored is not None:
            metrics.IMAGES_STORED.labels(str(job.images_stored).lower()).inc()
        if job.status is JobStatus.REFUSED:
            metrics.REFUSALS.labels(job.refusal_category, job.refusal_source).inc()
    elif moved.move.name == "requeue":
        metrics.RETRIES.inc()
    elif moved.move.name == "grant":
        metrics.SLOT_GRANTS.labels(str(job.tenant_id)).inc()


@listen
def _log(moved: Moved, _app: Celery | None) -> None:
    job = moved.job
    fields: dict[str, object] = {"job_id": str(job.id), "prompt_hash": prompt_hash(job.prompt)}
    if job.fal_request_id is not None:
        fields["fal_request_id"] = job.fal_request_id
    if job.status is JobStatus.REFUSED:
        fields.update(category=job.refusal_category, source=job.refusal_source)
    elif job.status is JobStatus.FAILED:
        fields["error"] = job.error
    if moved.move.name in ("reschedule", "collect", "release", "claim", "store"):
        return  # every few seconds per job: not worth a line each
    # a job's end is logged by its outcome (job.succeeded, job.refused, ...), a step by its move
    event = job.status.value if job.status in TERMINAL_STATUSES else moved.move.name
    log.info(f"job.{event}", status=job.status.value, **fields)


@listen
def _callback(moved: Moved, app: Celery | None) -> None:
    """A job that ended tells its web app, if it asked (``worker.jobs.callbacks``)."""
    job = moved.job
    if app is not None and job.callback_url is not None and job.status in TERMINAL_STATUSES:
        app.send_task(CALLBACK_TASK, args=[str(job.id)])


@listen
def _cooldown(moved: Moved, app: Celery | None) -> None:
    """A refusal may make its end user a repeat offender (``worker.tenants.cooldown``)."""
    job = moved.job
    if app is not None and job.status is JobStatus.REFUSED and job.tenant_id is not None:
        app.send_task(COOLDOWN_TASK, args=[str(job.tenant_id), job.end_user])
