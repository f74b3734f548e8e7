"""Fleet-wide limits shared by every worker through Redis.

* A cool-down: when any worker gets a 429 (with or without Retry-After), no worker submits
  before it ends. Celery's ``rate_limit`` is per worker and cannot do this.
* A cap on fal requests in flight (``IMAGEGEN_FAL_CONCURRENCY``): a semaphore whose slots
  are leases in a sorted set, so a worker that dies cannot leak its slot: it expires.
"""

from __future__ import annotations

import threading
import time

import redis

from worker.constants import FAL_COOLDOWN_KEY, FAL_SLOTS_KEY
from worker.redis_client import shared_redis

# KEYS[1] slots zset; ARGV: now, lease_s, limit, token, force. Returns 1 if the slot is held.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if ARGV[5] == '1' or redis.call('ZSCORE', KEYS[1], ARGV[4])
   or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
  return 1
end
return 0
"""
# KEYS[1] cool-down key; ARGV: until (epoch s), ttl_ms. Only ever extends it.
_COOL = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


class FalLimiter:
    """The cool-down and the concurrency cap; in this process only when there is no Redis."""

    def __init__(self, client: redis.Redis | None, *, limit: int | None, lease_s: float) -> None:
        self._redis, self.limit, self.lease_s = client, limit, lease_s
        self._local_slots: dict[str, float] = {}
        self._local_cool_until = 0.0
        self._lock = threading.Lock()
        self._acquire = client.register_script(_ACQUIRE) if client is not None else None
        self._cool = client.register_script(_COOL) if client is not None else None

    @classmethod
    def for_url(cls, redis_url: str, *, limit: int | None, lease_s: float) -> FalLimiter:
        client = shared_redis(redis_url) if redis_url.startswith("redis") else None
        return cls(client, limit=limit, lease_s=lease_s)

    def cooldown_remaining_s(self) -> float:
        if self._redis is not None:
            value = self._redis.get(FAL_COOLDOWN_KEY)
            until = float(value) if value else 0.0
        else:
            until = self._local_cool_until
        return max(until - time.time(), 0.0)

    def cool_down(self, seconds: float) -> None:
        """No worker submits for ``seconds`` (extends, never shortens, a running cool-down)."""
        until = time.time() + seconds
        if self._cool is not None:
            self._cool(keys=[FAL_COOLDOWN_KEY], args=[until, max(int(seconds * 1000), 1)])
        else:
            with self._lock:
                self._local_cool_until = max(self._local_cool_until, until)

    def try_acquire(self, token: str, *, force: bool = False, lease_s: float | None = None) -> bool:
        """Take (or renew) a slot; ``force`` for a request already in flight at fal."""
        if self.limit is None:
            return True
        now = time.time()
        lease = self.lease_s if lease_s is None else lease_s
        if self._acquire is not None:
            args: list[str | float | int] = [
                now,
                lease,
                self.limit,
                token,
                "1" if force else "0",
            ]
            return bool(self._acquire(keys=[FAL_SLOTS_KEY], args=args))
        with self._lock:
            live = {t: exp for t, exp in self._local_slots.items() if exp > now}
            if force or token in live or len(live) < self.limit:
                live[token] = now + lease
                self._local_slots = live
                return True
            self._local_slots = live
            return False

    def renew(self, token: str, *, lease_s: float | None = None) -> None:
        if self.limit is not None:
            self.try_acquire(token, force=True, lease_s=lease_s)

    def release(self, token: str) -> None:
        if self.limit is None:
            return
        if self._redis is not None:
            self._redis.zrem(FAL_SLOTS_KEY, token)
        else:
            with self._lock:
                self._local_slots.pop(token, None)

    def in_flight(self) -> int:
        if self._redis is not None:
            self._redis.zremrangebyscore(FAL_SLOTS_KEY, "-inf", time.time())
            return int(self._redis.zcard(FAL_SLOTS_KEY))
        return sum(1 for exp in self._local_slots.values() if exp > time.time())
