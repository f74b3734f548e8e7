"""A run's outcome as its Celery task's state, which Flower shows, filters and counts.

* ``succeeded``, ``refused:<category>`` (a refusal is an answer, recorded and never retried):
  SUCCESS, the summary as the task's result;
* ``failed``: FAILURE, exception ``JobFailed(<the job's error>)``;
* cancelled (here, or by ``imagegen cancel`` before or while the run worked): REVOKED;
* to be run again later: RETRY, exception ``JobRetrying(<reason>)``; the next run's events
  follow, and a later success clears that exception.

Every run of a job is the one task whose id is the job id, and Flower keeps a task's
SUCCESS over a later FAILURE: a run that ends without the job's outcome ends its task with
Celery's ``Ignore`` (no event; Flower shows STARTED meanwhile) and the run that records it
tells Flower. That is a run handed to a recorder thread (``worker.recorder``: the thread
announces the outcome on the worker's own event dispatcher, as the task would have), one
that parked its request for fal's webhook (the run the webhook wakes records it), one that
found the job leased by another run or finished (``skipped``), or lost it meanwhile
(``left``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import Task, current_app
from celery.exceptions import Ignore
from celery.signals import worker_ready
from celery.utils.saferepr import saferepr
from kombu.exceptions import OperationalError

from worker.errors import JobFailed, JobRetrying
from worker.logs import get_logger
from worker.pipeline import Done, RetryLater

log = get_logger(__name__)

#: the worker's Celery consumer (its ``event_dispatcher`` is replaced on a reconnect)
_consumer: Any = None


@worker_ready.connect
def _keep_consumer(sender: Any = None, **_: Any) -> None:
    global _consumer
    _consumer = sender


def task_result(task: Task, outcome: Done) -> str:
    """What the task returns for ``outcome``; raises for FAILURE and REVOKED (and for a run
    a recorder thread finishes, which announces its state itself)."""
    if outcome.cancelled:
        request = task.request
        announce(request.id, request.hostname, "task-revoked", **_REVOKED)
        raise Ignore()
    if outcome.summary in _ANOTHER_RUN_TELLS:
        raise Ignore()
    if outcome.summary == "failed":
        raise JobFailed(outcome.reason or "the job failed")
    return outcome.summary


@dataclass(frozen=True)
class HandedOver:
    """The task that handed its run to a recorder thread, as that thread announces it."""

    task_id: str | None
    hostname: str | None
    started: float

    @classmethod
    def current(cls, task: Task) -> HandedOver:
        """Called on the task's thread (its ``request`` is the running one's)."""
        request = task.request
        return cls(request.id, request.hostname, getattr(request, "imagegen_started", 0.0))


def announce_recorded(handed: HandedOver, outcome: Done | RetryLater) -> None:
    """The event Celery would have sent had the task itself recorded ``outcome``."""
    if isinstance(outcome, RetryLater):
        fields: dict[str, Any] = {"exception": saferepr(JobRetrying(outcome.reason))}
        event = "task-retried"
    elif outcome.cancelled:
        event, fields = "task-revoked", dict(_REVOKED)
    elif outcome.summary in _ANOTHER_RUN_TELLS:
        return
    elif outcome.summary == "failed":
        event = "task-failed"
        fields = {"exception": saferepr(JobFailed(outcome.reason or "the job failed"))}
    else:
        runtime_s = time.monotonic() - handed.started if handed.started else None
        event = "task-succeeded"
        fields = {"result": saferepr(outcome.summary), "runtime": runtime_s}
    announce(handed.task_id, handed.hostname, event, **fields)


def announce(task_id: str | None, hostname: str | None, event_type: str, **fields: Any) -> None:
    """Send a task event as the worker does: on its dispatcher, after the task's earlier
    events (threads pool); else (a prefork child) on one of its own.

    Outside a worker there is none; while the broker is unreachable the event is lost (as
    Celery's own are then): Flower only knows what it heard.
    """
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


#: runs that end without their job's outcome: the run holding (or taking over) the job, a
#: recorder thread, or the run fal's webhook wakes tells Flower (Celery would have said
#: SUCCESS, and Flower keeps a SUCCESS over a later FAILURE of the same task id)
_ANOTHER_RUN_TELLS = frozenset({"recording", "awaiting-webhook", "skipped", "left"})

#: the fields of Celery's own task-revoked event, for a revoke nobody sent to the worker
_REVOKED = {"terminated": False, "signum": None, "expired": False}
