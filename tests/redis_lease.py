"""Redis databases shared by test runs and benchmarks on one server.

A run uses (and flushes) database N of 1-15 only while it holds N's lease: a redis-py lock
in db 0 under ``imagegen-test-db:N``, renewed by a thread while held, so a long run never
loses it and a crashed one frees it within LEASE_S. Flushing is then safe: nobody else
writes there. Pub/sub is server-wide, not per database; kombu prefixes its channels with
``/N.`` (see ``event_channel``), so a subscriber must use that prefix to see only its run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis
from redis.exceptions import LockError
from redis.lock import Lock

HOST, PORT = "127.0.0.1", 6379
DATABASES = range(1, 16)
#: How long a lease outlives its holder; renewed every third of it.
LEASE_S = 120


def _key(db: int) -> str:
    return f"imagegen-test-db:{db}"


@dataclass
class Lease:
    """Database ``db`` held by this process until ``release``."""

    db: int
    lock: Lock
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{PORT}/{self.db}"

    def start(self) -> Lease:
        self.flush()  # what a crashed holder left
        threading.Thread(target=self._renew, name=f"redis-lease-{self.db}", daemon=True).start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 3):
            try:
                self.lock.reacquire()
            except LockError:
                return  # expired and taken: the holder's flushes would now be unsafe

    def flush(self) -> None:
        with redis.Redis(host=HOST, port=PORT, db=self.db) as client:
            client.flushdb()

    def release(self) -> None:
        self._stop.set()
        if self.lock.owned():
            self.flush()
            self.lock.release()


def try_lease(db: int, locks: redis.Redis) -> Lease | None:
    """Database ``db`` if no one holds it, else None."""
    lock = locks.lock(_key(db), timeout=LEASE_S, blocking=False, thread_local=False)
    return Lease(db, lock).start() if lock.acquire() else None


def lease_free_db(locks: redis.Redis, wait_s: float = 60) -> Lease | None:
    """The first database of 1-15 no one holds, waiting up to ``wait_s`` for one."""
    deadline = time.monotonic() + wait_s
    while True:
        for db in DATABASES:
            lease = try_lease(db, locks)
            if lease is not None:
                return lease
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def event_channel(db: int, exchange: str = "celeryev") -> str:
    """The pub/sub pattern of database ``db``'s Celery events (kombu's fanout prefix)."""
    return f"/{db}.{exchange}/*"
