"""worker.events: none of a worker's task events (Flower's feed) is left behind across a
broker reconnect or at a warm shutdown (celery/celery#8541)."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from celery.worker.consumer.events import Events

from tests.conftest import Stack, unique
from tests.redis_lease import event_channel
from tests.test_outages import _job, _through_proxy, _wait_for


class EventFeed:
    """The worker's task events as Flower receives them: (received, started, succeeded) lists,
    one list per message on the event exchange."""

    KINDS = ("task-received", "task-started", "task-succeeded")

    def __init__(self, redis_url: str) -> None:
        self.messages: list[list[dict[str, Any]]] = []
        self._done = threading.Event()
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub()
        # this test's database only: pub/sub spans the server, other runs publish there too
        self._pubsub.psubscribe(event_channel(self._client.connection_pool.connection_kwargs["db"]))
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()
        time.sleep(0.3)  # subscribed before the first event

    def _listen(self) -> None:
        while not self._done.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None or message["type"] != "pmessage":
                continue
            envelope = json.loads(message["data"])
            body = envelope["body"]
            if envelope["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            events = json.loads(body)
            events = events if isinstance(events, list) else [events]
            ours = [e for e in events if e["type"] in self.KINDS]
            if ours:
                self.messages.append(ours)

    def events(self) -> list[dict[str, Any]]:
        return [e for batch in self.messages for e in batch]

    def tasks(self, kind: str) -> set[str]:
        return {e["uuid"] for e in self.events() if e["type"] == kind}

    def wait_for(self, count: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.events()) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


def stages(*job_ids: object) -> set[str]:
    """The task ids of a job that succeeded on its first submit: submit, collect, store."""
    return {t for j in job_ids for t in (str(j), f"{j}/collect-1", f"{j}/store-1")}


@pytest.mark.slow
def test_a_worker_stopping_publishes_the_events_still_buffered(running: Stack) -> None:
    """A warm shutdown right after a job ends still tells Flower the task succeeded (Celery's
    hub runs its pending flush when it closes, before the dispatcher is closed)."""
    feed = EventFeed(running.redis_url)
    job_id = running.enqueue(unique("a kite, the last one before a shutdown"))
    assert running.wait_terminal(job_id)["status"] == "succeeded"
    worker = running.workers[0]
    worker.send_signal(signal.SIGTERM)  # Celery's warm shutdown
    assert worker.wait(30) == 0, running.logs()
    feed.wait_for(6, timeout_s=5)
    feed.close()
    assert feed.tasks("task-succeeded") == stages(job_id), feed.messages


def _publish_event(redis_url: str, db: int, task_id: str) -> None:
    """A task-succeeded event as kombu publishes it on database ``db``'s event channel."""
    body = json.dumps([{"type": "task-succeeded", "uuid": task_id, "timestamp": time.time()}])
    envelope = {"body": body, "properties": {}, "content-type": "application/json"}
    with redis.Redis.from_url(redis_url) as client:
        client.publish(event_channel(db).replace("*", "task.multi"), json.dumps(envelope))


def test_the_feed_hears_its_own_database_only(redis_url: str) -> None:
    """Pub/sub spans the Redis server: another test run's events must not reach this one."""
    db = int(redis_url.rsplit("/", 1)[1])
    feed = EventFeed(redis_url)
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    _publish_event(redis_url, 99, theirs)  # another database's (99: no run's, so none hears it)
    _publish_event(redis_url, db, ours)
    feed.wait_for(1, timeout_s=5)
    time.sleep(0.3)
    feed.close()
    assert feed.tasks("task-succeeded") == {ours}, feed.messages


class _ConsumerSide:
    """What Celery's Events bootstep reads of a worker's consumer (an event loop that never
    runs here, as while the consumer reconnects: the buffered events stay buffered)."""

    hostname = "reconnect@imagegen-test"
    amqheartbeat = 0
    hub = True

    def __init__(self, app: Any) -> None:
        self.app = app
        self.event_dispatcher: Any = None

    def connection_for_write(self, **_: Any) -> Any:
        return self.app.connection_for_write()

    def on_send_event_buffered(self) -> None:
        pass


def test_task_events_buffered_when_the_broker_connection_drops_are_sent_after_it(
    stack: Stack,
) -> None:
    """A broker reconnect restarts the worker's Events bootstep with a new dispatcher: the
    task events the old one still held reach Flower (Celery 5.7 drops them)."""
    feed = EventFeed(stack.redis_url)
    consumer = _ConsumerSide(stack.app())
    step = Events(consumer)
    step.start(consumer)
    task_id = str(uuid.uuid4())
    consumer.event_dispatcher.send("task-succeeded", uuid=task_id, result="'succeeded'")
    time.sleep(0.3)
    assert feed.messages == []  # still buffered: no loop flushed it
    try:
        step.start(consumer)  # what the consumer does once it has reconnected
        feed.wait_for(1, timeout_s=5)
    finally:
        step.shutdown(consumer)
        feed.close()
    assert feed.tasks("task-succeeded") == {task_id}, feed.messages


def _drop_connections(redis_url: str) -> int:
    """What a Redis restart does to the worker: the (non-pub/sub) connections to this test's
    database are closed; not the whole server's, which other test runs use."""
    with redis.Redis.from_url(redis_url) as admin:
        db, me = admin.connection_pool.connection_kwargs["db"], admin.client_id()
        ours = [
            c["id"]
            for c in admin.client_list(_type="normal")
            if int(c["db"]) == db and int(c["id"]) != me
        ]
        return sum(admin.client_kill_filter(_id=client) for client in ours)


@pytest.mark.slow
def test_a_worker_whose_broker_connections_drop_keeps_sending_task_events(
    running: Stack,
) -> None:
    """After Redis dropped every connection of the worker, its next job's events still come."""
    feed = EventFeed(running.redis_url)
    first = running.enqueue(unique("a kite, before the drop"))
    assert running.wait_terminal(first)["status"] == "succeeded"
    feed.wait_for(6)
    dropped = _drop_connections(running.redis_url)
    assert dropped > 0
    second = running.enqueue(unique("a kite, after the drop"))
    assert running.wait_terminal(second, timeout_s=60)["status"] == "succeeded"
    feed.wait_for(12)
    feed.close()
    for kind in EventFeed.KINDS:
        assert feed.tasks(kind) == stages(first, second), (kind, feed.messages)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_task_that_ends_while_redis_is_away_is_shown_succeeded(stack: Stack) -> None:
    """The job's task ends during an 8 s Redis outage (the worker reaches Redis through a
    proxy the test cuts): its task-succeeded still reaches Flower's feed afterwards."""
    feed = EventFeed(stack.redis_url)  # straight to Redis: it hears the worker after the cut
    proxy = _through_proxy(stack)
    try:
        job_id = stack.enqueue(unique("[[fal:ok+latency:3]] ends while Redis is away"))
        _wait_for("submitted", lambda: _job(stack, job_id)["fal_request_id"] is not None)
        proxy.cut(8)
        assert stack.wait_terminal(job_id, timeout_s=90)["status"] == "succeeded"
        later = stack.enqueue(unique("a kite, after Redis came back"))
        assert stack.wait_terminal(later, timeout_s=90)["status"] == "succeeded"
        feed.wait_for(12, timeout_s=10)
    finally:
        proxy.close()
        feed.close()
    assert feed.tasks("task-succeeded") == stages(job_id, later), feed.messages
