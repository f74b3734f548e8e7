"""A stage's outcome as its Celery task's state, which Flower shows, filters and counts.

* ``succeeded``, ``refused:<category>``, ``at_fal:<request id> since <time>``: SUCCESS,
  the summary as the task's result (a refusal is an answer, recorded, never retried);
* ``failed``: FAILURE, exception ``JobFailed(<the job's error>)``;
* ``cancelled`` (here, or by ``imagegen cancel`` before or while the stage ran): REVOKED;
* to be run again later: RETRY, exception ``JobRetrying(<reason>)``;
* ``skipped`` (a duplicate message for a job another run moved on or ended): no state of
  its own (Celery's Ignore: no terminal event), so Flower keeps what that run recorded.

Each stage run is its own task id (``worker.jobs.dispatch``), so a later stage's state
never fights an earlier one's in Flower.
"""

from __future__ import annotations

from typing import Any

from celery import Task, current_app
from celery.exceptions import Ignore
from celery.signals import worker_ready
from kombu.exceptions import OperationalError

from imagegen.worker.errors import JobFailed, JobRetrying
from imagegen.worker.jobs.outcome import SKIPPED, Outcome
from imagegen.worker.logs import get_logger
from imagegen.worker.settings import get_settings

log = get_logger(__name__)

#: the worker's Celery consumer (its ``event_dispatcher`` is replaced on a reconnect)
_consumer: Any = None


@worker_ready.connect
def _keep_consumer(sender: Any = None, **_: Any) -> None:
    global _consumer
    _consumer = sender


def task_result(task: Task, outcome: Outcome) -> str:
    """What the task returns for ``outcome``; raises for RETRY, FAILURE and REVOKED."""
    if outcome.retry_in is not None:
        reason = JobRetrying(outcome.reason or "retried")
        # a message waiting for its countdown is unacknowledged: past the visibility timeout
        # Redis would hand it out again; a longer wait (a fleet cool-down) is re-checked
        countdown = min(outcome.retry_in, get_settings().visibility_timeout_s / 2)
        raise task.retry(exc=reason, countdown=countdown, max_retries=None)
    if outcome.cancelled:
        request = task.request
        announce(request.id, request.hostname, "task-revoked", **_REVOKED)
        raise Ignore()
    if outcome.failed:
        raise JobFailed(outcome.reason or "the job failed")
    if outcome == SKIPPED:  # a SUCCESS here would overwrite the same task id's outcome
        raise Ignore()
    return outcome.summary


def announce(task_id: str | None, hostname: str | None, event_type: str, **fields: Any) -> None:
    """Send a task event as the worker does: on its dispatcher; else (a prefork child) on
    one of its own. While the broker is unreachable the event is lost, as Celery's are."""
    if task_id is None:
        return
    dispatcher = getattr(_consumer, "event_dispatcher", None)
    if dispatcher is not None:
        if dispatcher.enabled:
            dispatcher.send(event_type, uuid=task_id, **fields)
        return
    if hostname is None:
        return
    try:
        with current_app.events.default_dispatcher(hostname=hostname) as own:
            own.send(event_type, uuid=task_id, **fields)
    except (OSError, OperationalError) as exc:
        log.warning("flower.event_lost", event_type=event_type, task_id=task_id, error=str(exc))


#: the fields of Celery's own task-revoked event, for a revoke nobody sent to the worker
_REVOKED = {"terminated": False, "signum": None, "expired": False}
