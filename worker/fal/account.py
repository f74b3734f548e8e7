"""The fleet-wide "fal locked our account" switch (403 "User is locked")."""

from __future__ import annotations

import threading
import time

import redis

from imagegen.worker.constants import ACCOUNT_LOCK_KEY
from imagegen.worker.logs import get_logger
from imagegen.worker.redis_client import shared_redis

log = get_logger(__name__)


class AccountGuard:
    """Once fal says the account is locked, no worker submits until the lock expires.

    Kept in Redis (shared by every worker) when the broker is Redis, else in this process.
    ``imagegen account unlock`` clears it early.
    """

    def __init__(self, client: redis.Redis | None, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._local: tuple[str, float] | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, redis_url: str, ttl_s: int, *, patient: bool = False) -> AccountGuard:
        """``patient``: a worker's, waiting out a Redis restart (``worker.redis_client``)."""
        client = shared_redis(redis_url, patient=patient) if redis_url.startswith("redis") else None
        return cls(client, ttl_s)

    def reason(self) -> str | None:
        if self._redis is not None:
            value = self._redis.get(ACCOUNT_LOCK_KEY)
            return value.decode() if isinstance(value, bytes) else None
        with self._lock:
            if self._local and self._local[1] > time.monotonic():
                return self._local[0]
        return None

    def lock(self, reason: str) -> None:
        """Record the lock; the first worker to see it logs one loud operator error."""
        if self._redis is not None:
            first = bool(self._redis.set(ACCOUNT_LOCK_KEY, reason, nx=True, ex=self._ttl_s))
        else:
            with self._lock:
                first = self._local is None or self._local[1] <= time.monotonic()
                self._local = (reason, time.monotonic() + self._ttl_s)
        if first:
            log.critical(
                "fal.account_locked",
                reason=reason,
                action="top up or unlock the fal account, then run `imagegen account unlock`",
                paused_s=self._ttl_s,
            )

    def unlock(self) -> None:
        if self._redis is not None:
            self._redis.delete(ACCOUNT_LOCK_KEY)
        with self._lock:
            self._local = None
