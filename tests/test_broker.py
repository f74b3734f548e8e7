"""worker.broker: kombu's Redis transport with one Redis client per channel, and Celery's
consumer flushing task events once a window."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import redis
from kombu import Connection

from tests.conftest import Stack, unique
from worker.api import enqueue_many
from worker.broker import TRANSPORT, Channel
from worker.celery_app import create_app
from worker.settings import Settings


def test_the_app_uses_it_for_redis_urls_only(redis_url: str) -> None:
    app = create_app(Settings(_env_file=None, REDIS_URL=redis_url))  # type: ignore[call-arg]
    assert app.conf.broker_transport == TRANSPORT
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, Channel)
    demo = Settings(_env_file=None, REDIS_URL="sqla+sqlite:///x.db")  # type: ignore[call-arg]
    assert create_app(demo).conf.broker_transport is None


def test_a_channel_reuses_one_client_and_a_new_pool_gets_a_new_one(redis_url: str) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert channel._create_client(asynchronous=True) is not first
        queue = conn.SimpleQueue("imagegen-broker-test")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        message.ack()  # the ack and the delivery bookkeeping go through that client
        assert message.payload == {"n": 1}
        queue.close()
        channel._pool = None  # as after a reconnect
        assert channel._create_client() is not first


def test_a_worker_publishes_its_task_events_together_not_one_message_each(running: Stack) -> None:
    """Every task event reaches the event exchange (Flower's feed), a window to a message."""
    done = threading.Event()
    messages: list[list[dict[str, Any]]] = []
    client = redis.Redis.from_url(running.redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("*celeryev*")

    def listen() -> None:
        while not done.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message is None or message["type"] != "pmessage":
                continue
            envelope = json.loads(message["data"])
            body = envelope["body"]
            if envelope["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            events = json.loads(body)
            events = events if isinstance(events, list) else [events]
            ours = [
                e
                for e in events
                if e["type"] in ("task-received", "task-started", "task-succeeded")
            ]
            if ours:
                messages.append(ours)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.3)  # subscribed before the first event
    ids = enqueue_many(
        [unique(f"a kite, event batch {i}") for i in range(40)],
        settings=running.settings(),
        app=running.app(),
    )
    for job_id in ids:
        assert running.wait_terminal(job_id)["status"] == "succeeded"
    deadline = time.monotonic() + 10
    while sum(map(len, messages)) < 3 * len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    listener.join(5)
    pubsub.close()
    client.close()
    events = [e for batch in messages for e in batch]
    for kind in ("task-received", "task-started", "task-succeeded"):
        seen = {e["uuid"] for e in events if e["type"] == kind}
        assert len(seen) == len(ids), f"{kind}: {len(seen)} of {len(ids)} tasks"
    # One message per event (or ~2.6 a message, as Celery flushes after each event) would be
    # 46-120 messages; a flush every EVENT_FLUSH_S while 40 jobs run takes a handful.
    assert len(messages) <= len(events) / 5, [len(batch) for batch in messages]
