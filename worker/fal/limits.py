"""Fleet-wide limits shared by every worker through Redis.

Before each submit a run asks for admission once (``FalLimiter.admit``): one Lua script
reads the account lock and the cool-down and takes a slot, a single Redis round trip.

* A cool-down: when any worker gets a 429 (with or without Retry-After), no worker submits
  before it ends. Celery's ``rate_limit`` is per worker and cannot do this.
* A cap on fal requests in flight (``IMAGEGEN_FAL_CONCURRENCY``): a semaphore whose slots
  are leases in a sorted set, so a worker that dies cannot leak its slot: it expires.
* While jobs wait for a slot (the waiting flag), a new submit waits too: only the granter
  (``worker.jobs.fairshare``) hands out freed slots, to the tenant furthest below its share.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import redis

from imagegen.worker.constants import (
    ACCOUNT_LOCK_KEY,
    FAL_COOLDOWN_KEY,
    FAL_SLOTS_KEY,
    FAL_WAITING_KEY,
)
from imagegen.worker.fal.account import AccountGuard
from imagegen.worker.redis_client import shared_redis
from imagegen.worker.settings import Settings


@dataclass(frozen=True)
class Admission:
    """May this run submit now? ``locked``: fal locked the account (its reason);
    ``cool_s``: a fleet-wide cool-down still runs; neither and not ``admitted``: no slot.
    ``held_before``: the token already held its slot (another run of the same job may be
    using it: not ours to release if we end up not running the job)."""

    admitted: bool
    cool_s: float = 0.0
    locked: str | None = None
    held_before: bool = False


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
# KEYS: slots zset, cool-down key, account-lock key, waiting flag; ARGV: now, lease_s,
# limit (-1: none), token. Returns {'locked', reason}, {'cool', until}, {'full', ''} or
# {'ok', ''|'held'}; while the waiting flag is set only a slot kept for the token admits.
_ADMIT = """
local reason = redis.call('GET', KEYS[3])
if reason then return {'locked', reason} end
local cool_until = tonumber(redis.call('GET', KEYS[2]) or '0')
if cool_until > tonumber(ARGV[1]) then return {'cool', tostring(cool_until)} end
if tonumber(ARGV[3]) < 0 then return {'ok', ''} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZSCORE', KEYS[1], ARGV[4])
if not held and redis.call('EXISTS', KEYS[4]) == 1 then return {'full', ''} end
if held or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
  if held then return {'ok', 'held'} end
  return {'ok', ''}
end
return {'full', ''}
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
        self._local_waiting_until = 0.0
        self._lock = threading.Lock()
        self._acquire = client.register_script(_ACQUIRE) if client is not None else None
        self._admit = client.register_script(_ADMIT) if client is not None else None
        self._cool = client.register_script(_COOL) if client is not None else None

    @classmethod
    def for_url(
        cls, redis_url: str, *, limit: int | None, lease_s: float, patient: bool = False
    ) -> FalLimiter:
        """``patient``: a worker's, waiting out a Redis restart (``worker.redis_client``)."""
        redis_ok = redis_url.startswith("redis")
        client = shared_redis(redis_url, patient=patient) if redis_ok else None
        return cls(client, limit=limit, lease_s=lease_s)

    @classmethod
    def for_settings(cls, settings: Settings) -> FalLimiter:
        """The process's limiter for these settings (IMAGEGEN_FAL_CONCURRENCY, REDIS_URL)."""
        return _shared_limiter(settings.redis_url, settings.fal_concurrency, settings.lease_s)

    def admit(self, token: str, guard: AccountGuard) -> Admission:
        """Check the account lock and the cool-down, then take a slot (one round trip).

        ``guard`` answers for the account lock when there is no Redis (this process only).
        """
        if self._admit is None:
            if (reason := guard.reason()) is not None:
                return Admission(False, locked=reason)
            if (cooling := self.cooldown_remaining_s()) > 0:
                return Admission(False, cool_s=cooling)
            with self._lock:
                held = self._local_slots.get(token, 0.0) > time.time()
            if not held and self.limit is not None and self.anyone_waiting():
                return Admission(False)
            return Admission(self.try_acquire(token), held_before=held)
        now = time.time()
        limit = -1 if self.limit is None else self.limit
        keys = [FAL_SLOTS_KEY, FAL_COOLDOWN_KEY, ACCOUNT_LOCK_KEY, FAL_WAITING_KEY]
        verdict, value = self._admit(keys=keys, args=[now, self.lease_s, limit, token])
        if verdict == b"locked":
            return Admission(False, locked=value.decode(errors="replace"))
        if verdict == b"cool":
            return Admission(False, cool_s=max(float(value) - now, 0.0))
        return Admission(verdict == b"ok", held_before=value == b"held")

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

    def mark_waiting(self, ttl_s: float) -> bool:
        """Jobs wait for a slot: new submits wait too for ``ttl_s`` (the granter renews it).
        True when the flag was not set before."""
        if self._redis is not None:
            before = self._redis.set(FAL_WAITING_KEY, "1", px=max(int(ttl_s * 1000), 1), get=True)
            return before is None
        with self._lock:
            now = time.time()
            new, self._local_waiting_until = self._local_waiting_until <= now, now + ttl_s
        return new

    def clear_waiting(self) -> None:
        if self._redis is not None:
            self._redis.delete(FAL_WAITING_KEY)
        else:
            self._local_waiting_until = 0.0

    def anyone_waiting(self) -> bool:
        if self._redis is not None:
            return bool(self._redis.exists(FAL_WAITING_KEY))
        return self._local_waiting_until > time.time()

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

    def renew_many(self, tokens: list[str], lease_s: float) -> None:
        """Renew many slots in one round trip (the poller, for the requests still at fal)."""
        if self.limit is None or not tokens:
            return
        until = time.time() + lease_s
        if self._redis is None:
            with self._lock:
                self._local_slots.update(dict.fromkeys(tokens, until))
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for token in tokens:
                pipe.zadd(FAL_SLOTS_KEY, {token: until})
            pipe.execute()

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


@lru_cache(maxsize=4)
def _shared_limiter(redis_url: str, limit: int | None, lease_s: float) -> FalLimiter:
    return FalLimiter.for_url(redis_url, limit=limit, lease_s=lease_s)
