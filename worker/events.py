"""Celery's event dispatcher, keeping a worker's buffered task events across a reconnect.

Works around celery/celery#8541 (open: a task that ends across a broker reconnect stays
STARTED in Flower), the part Celery 5.7 still has; see ``EventDispatcher``. Named by path in
``worker.celery_app`` (``Celery(events=...)``), so only an app that sends events imports it.
"""

from __future__ import annotations

import socket
from typing import Any

from celery.app.events import Events as CeleryEvents
from celery.events.dispatcher import EventDispatcher as CeleryEventDispatcher

#: task events after which Flower must not show an exception an earlier run's retry left
_CLEARS_EXCEPTION = frozenset({"task-succeeded", "task-revoked"})


class EventDispatcher(CeleryEventDispatcher):
    """Celery's dispatcher; a new one takes over the old one's buffered *group* events too.

    After a broker connection drops, the worker's Events bootstep reconnects, then closes
    its dispatcher, makes a new one and calls ``extend_buffer(old)`` so the events sent
    meanwhile still go out. Celery copies only the outbound buffer (events whose publish
    failed), not the task events still buffered for the event loop's next flush, which
    does not run while the consumer reconnects: a task that ended during a Redis outage
    stayed STARTED in Flower (celery/celery#8541; 5.7 re-points running tasks at the new
    dispatcher, celery/celery#10383, but drops these). Here they go first in the new
    dispatcher's buffers, which the bootstep flushes next.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A worker names itself; any other sender (a web app enqueueing, the Python API)
        # would be Celery's ``gen<pid>@host``, a new ``worker`` label in Flower's metrics
        # for every process that ever enqueued. One name per host instead.
        if len(args) < 2 and not kwargs.get("hostname"):
            kwargs["hostname"] = client_nodename()
        super().__init__(*args, **kwargs)

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        # A task's id is its job's, and every run of the job is that one task to Flower, which
        # keeps the fields of earlier events: a success or revoke clears a retry's exception.
        if type in _CLEARS_EXCEPTION:
            fields.setdefault("exception", None)
            fields.setdefault("traceback", None)
        return super().send(type, *args, **fields)

    def extend_buffer(self, other: CeleryEventDispatcher) -> None:
        super().extend_buffer(other)
        with other.mutex:  # the old dispatcher is closed: no flush of it is running
            held = [(group, events[:]) for group, events in other._group_buffer.items() if events]
            other._group_buffer.clear()
        with self.mutex:
            for group, events in held:
                self._group_buffer[group][:0] = events


class Events(CeleryEvents):
    """``app.events``, making ``worker.events.EventDispatcher``s."""

    dispatcher_cls = "imagegen.worker.events:EventDispatcher"


def client_nodename() -> str:
    """The sender name of events from a process that is not a worker: ``enqueue@<host>``."""
    return f"enqueue@{socket.gethostname()}"
