"""How a worker talks to Redis: kombu's transport and Celery's consumer, each made cheaper.

``Transport``: kombu's Redis transport, keeping one Redis client per channel for its
synchronous calls.

kombu's ``Channel.conn_or_acquire`` builds a new ``redis.Redis`` for every call it makes
outside the event loop: recording each delivered message as unacked, each ack, each
published event. Building one copies redis-py's table of ~170 response callbacks (about
0.15 ms of CPU on a 2-core host, three times a job, much of it on the consumer's thread,
which every task message passes through). The clients share the channel's connection
pool and a ``redis.Redis`` is safe to share between threads, so one is enough; a new pool
(after a reconnect) gets a new client.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client(asynchronous=False)
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


#: for Celery's ``broker_transport`` (a redis:// broker URL keeps its meaning)
TRANSPORT = f"{__name__}:Transport"


#: how long a task event (for Flower) waits in the worker's buffer for others to go with it
EVENT_FLUSH_S = 0.1


class Consumer(CeleryConsumer):
    """Celery's consumer, publishing the buffered task events at most every ``EVENT_FLUSH_S``.

    A threads-pool worker buffers its task events (received, started, succeeded) and Celery
    asks the event loop to flush them after every single one: an event sent from a pool
    thread wakes the loop and leaves in a Redis PUBLISH with the few that came meanwhile
    (1000 jobs at zero latency: 1148 messages, 12 % of the workers' GIL samples in the
    flushes). Here the first event of a window schedules one flush ``EVENT_FLUSH_S`` later
    on the loop's own timer and the rest join it (237 messages). Celery still flushes at once
    when the buffer holds ``buffer_limit`` events. Flower sees an event at most
    ``EVENT_FLUSH_S`` later. At shutdown the buffer is flushed before Celery closes the
    dispatcher (Celery itself dropped what was still buffered then: a task that ended just
    before a warm shutdown could stay STARTED in Flower).
    """

    _flush_due = False

    def on_send_event_buffered(self) -> None:  # any thread, after an event was buffered
        if self.hub is None or self._flush_due:
            return
        self._flush_due = True
        self.hub.call_soon(self._schedule_flush)

    def _schedule_flush(self) -> None:  # the loop's thread
        self.hub.call_later(EVENT_FLUSH_S, self._flush_buffered)

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()

    def _flush_buffered(self) -> None:
        # Cleared before the flush: an event buffered while it publishes schedules the next.
        self._flush_due = False
        self._flush_events()


#: for Celery's ``worker_consumer``
CONSUMER = f"{__name__}:Consumer"
