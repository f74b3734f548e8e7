"""Publishing queued jobs' task messages: Redis pipelines, batched task-sent events.

Apart from ``worker.jobs.enqueue`` (which re-exports ``publish_many``) so that either stays
short; ``imagegen retry`` publishes through it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu import Producer
from kombu.exceptions import BatchPublishError, OperationalError
from sqlalchemy import delete

from imagegen.models import Job, JobStatus
from imagegen.worker import metrics
from imagegen.worker.constants import SUBMIT_TASK
from imagegen.worker.db import session_scope
from imagegen.worker.errors import EnqueueError
from imagegen.worker.settings import Settings


def publish_many(job_ids: list[uuid.UUID], settings: Settings, app: Celery | None) -> None:
    if not job_ids:
        return
    app = app or default_app()
    try:
        # Redis pipelines of PUBLISH_BATCH task messages (a round trip and a client per
        # message otherwise); if one fails, delivery is uncertain: the rows go, and a worker
        # that gets a message without its row skips it.
        with (
            app.producer_or_acquire() as producer,
            _sent_events(app, producer) as events,
            producer.batch(max_size=PUBLISH_BATCH),
        ):
            for job_id in job_ids:
                app.send_task(
                    SUBMIT_TASK,
                    args=[str(job_id)],
                    task_id=str(job_id),
                    producer=producer,
                    event_dispatcher=events,
                )
    except (OperationalError, BatchPublishError, OSError) as exc:
        with session_scope(settings.database_url) as session:
            session.execute(delete(Job).where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED))
        raise EnqueueError(f"the broker could not be reached, job(s) not queued: {exc}") from exc
    metrics.ENQUEUED.inc(len(job_ids))


class _BatchedSentEvents:
    """Celery's ``task-sent`` events for a batch of task messages, handed to Celery's own
    event dispatcher with the ``task`` group buffered: it publishes them ``SENT_EVENTS_PER_MESSAGE``
    to a message (routing key ``task.multi``, which Flower reads like a worker's batched task
    events) where Celery publishes one message per event, ~a third of ``enqueue_many``'s CPU.
    ``send_task`` calls ``publish`` for each message it sends."""

    def __init__(self, app: Celery, producer: Producer) -> None:
        self.dispatcher = app.events.Dispatcher(
            channel=producer.channel, buffer_group=["task"], buffer_limit=SENT_EVENTS_PER_MESSAGE
        )

    def publish(self, kind: str, fields: dict[str, Any], producer: Producer, **_: Any) -> None:
        self.dispatcher.send(kind, **fields)


#: task messages per Redis pipeline: enough to amortise a round trip, few enough that workers
#: start on a big batch's first jobs while the rest are serialised (kombu's 1000 held them)
PUBLISH_BATCH = 100

#: task-sent events in one message: ~400 bytes each
SENT_EVENTS_PER_MESSAGE = 500


@contextmanager
def _sent_events(app: Celery, producer: Producer) -> Iterator[_BatchedSentEvents | None]:
    """The batch's task-sent events (None when ``task_send_sent_event`` is off): published
    when the batch's messages have been, on the same connection."""
    if not app.conf.task_send_sent_event:
        yield None
        return
    events = _BatchedSentEvents(app, producer)
    try:
        yield events
        events.dispatcher.flush()
    finally:
        events.dispatcher.close()


def default_app() -> Celery:
    from imagegen.worker.celery_app import app

    return app
