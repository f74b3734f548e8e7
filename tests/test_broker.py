"""worker.broker: kombu's Redis transport with one Redis client per channel."""

from __future__ import annotations

from kombu import Connection

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
