"""kombu's Redis transport, keeping one Redis client per channel for its synchronous calls.

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
