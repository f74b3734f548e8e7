"""FalLimiter.admit against real Redis, and in-process without it: one call decides."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from imagegen.worker.fal.account import AccountGuard
from imagegen.worker.fal.limits import FalLimiter


@pytest.fixture(params=["redis", "local"])
def parts(
    request: pytest.FixtureRequest, redis_url: str
) -> Iterator[tuple[FalLimiter, AccountGuard]]:
    client = redis.Redis.from_url(redis_url) if request.param == "redis" else None
    yield FalLimiter(client, limit=2, lease_s=30), AccountGuard(client, 60)
    if client is not None:
        client.close()


def test_admits_up_to_the_limit_and_a_held_token_again(
    parts: tuple[FalLimiter, AccountGuard],
) -> None:
    limiter, guard = parts
    first = limiter.admit("a", guard)
    assert first.admitted and not first.held_before
    assert limiter.admit("b", guard).admitted
    full = limiter.admit("c", guard)
    assert not full.admitted and full.locked is None and full.cool_s == 0
    again = limiter.admit("a", guard)  # already holds its slot
    assert again.admitted and again.held_before
    limiter.release("a")
    assert limiter.admit("c", guard).admitted
    assert limiter.in_flight() == 2


def test_while_jobs_wait_only_a_kept_slot_admits_until_the_flag_goes(
    parts: tuple[FalLimiter, AccountGuard],
) -> None:
    limiter, guard = parts
    assert limiter.try_acquire("granted")  # the granter keeps a slot for its job
    limiter.mark_waiting(20)
    assert limiter.anyone_waiting()
    assert not limiter.admit("newcomer", guard).admitted  # a slot is free, but jobs wait
    assert limiter.admit("granted", guard).admitted
    limiter.clear_waiting()
    assert not limiter.anyone_waiting() and limiter.admit("newcomer", guard).admitted


def test_the_waiting_flag_lapses_on_its_own(parts: tuple[FalLimiter, AccountGuard]) -> None:
    limiter, guard = parts
    limiter.mark_waiting(0.2)
    time.sleep(0.3)
    assert not limiter.anyone_waiting() and limiter.admit("a", guard).admitted


def test_a_cool_down_refuses_with_the_time_left(parts: tuple[FalLimiter, AccountGuard]) -> None:
    limiter, guard = parts
    limiter.cool_down(20)
    admission = limiter.admit("a", guard)
    assert not admission.admitted and 19 < admission.cool_s <= 20
    assert limiter.in_flight() == 0  # no slot taken while cooling


def test_a_locked_account_refuses_with_its_reason_before_anything_else(
    parts: tuple[FalLimiter, AccountGuard],
) -> None:
    limiter, guard = parts
    limiter.cool_down(20)
    guard.lock("User is locked: exhausted balance")
    admission = limiter.admit("a", guard)
    assert admission.locked == "User is locked: exhausted balance" and not admission.admitted
    guard.unlock()
    assert limiter.admit("a", guard).cool_s > 0


def test_without_a_cap_only_the_lock_and_cool_down_count(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter, guard = FalLimiter(client, limit=None, lease_s=30), AccountGuard(client, 60)
    assert all(limiter.admit(str(i), guard).admitted for i in range(50))
    limiter.cool_down(0.2)
    assert not limiter.admit("x", guard).admitted
    time.sleep(0.25)
    assert limiter.admit("x", guard).admitted
    client.close()
