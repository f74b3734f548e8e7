"""Unit tests for worker.jobs.retry.RetryPolicy: backoff bounds, caps, Retry-After, give-up."""

from __future__ import annotations

import random

import pytest

from imagegen.worker.errors import (
    AccountLocked,
    FalError,
    PermanentFalError,
    PolicyRefusal,
    TransientFalError,
)
from imagegen.worker.jobs.retry import GiveUp, Retry, RetryPolicy
from imagegen.worker.settings import Settings


def policy(rand: float, **kwargs: float) -> RetryPolicy:
    return RetryPolicy(rand=lambda: rand, **kwargs)  # type: ignore[arg-type]


def transient(retry_after_s: float | None = None) -> TransientFalError:
    return TransientFalError("fal answered HTTP 503", retry_after_s=retry_after_s)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0), (6, 64.0), (7, 120.0), (20, 120.0)],
)
def test_backoff_ceiling_doubles_then_caps(attempt: int, ceiling: float) -> None:
    assert policy(1.0).backoff_s(attempt) == ceiling
    assert policy(0.0).backoff_s(attempt) == 0.0
    assert policy(0.25).backoff_s(attempt) == pytest.approx(ceiling * 0.25)


def test_backoff_attempt_zero_uses_base() -> None:
    assert policy(1.0).backoff_s(0) == 2.0


def test_backoff_respects_custom_base_and_cap() -> None:
    p = policy(1.0, base_s=0.5, cap_s=3.0)
    assert [p.backoff_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_full_jitter_stays_within_bounds_and_spreads() -> None:
    rng = random.Random(1234)
    p = RetryPolicy(rand=rng.random)
    samples = [p.backoff_s(4) for _ in range(2000)]
    assert all(0.0 <= s <= 16.0 for s in samples)
    # full jitter: spread over the whole range, not clustered near the ceiling
    assert min(samples) < 2.0
    assert max(samples) > 14.0


def test_decide_transient_retries_with_backoff() -> None:
    decision = policy(1.0).decide(transient(), attempt=1)
    assert decision == Retry(2.0, "backoff")
    decision = policy(0.5).decide(transient(), attempt=3)
    assert isinstance(decision, Retry)
    assert decision.delay_s == pytest.approx(4.0)


def test_retry_after_wins_over_backoff() -> None:
    decision = policy(1.0).decide(transient(retry_after_s=7), attempt=4)
    assert isinstance(decision, Retry)
    assert decision.delay_s == 7
    assert "Retry-After" in decision.reason


def test_retry_after_longer_than_backoff_cap_is_honoured() -> None:
    decision = policy(1.0, cap_s=10.0).decide(transient(retry_after_s=300), attempt=1)
    assert isinstance(decision, Retry)
    assert decision.delay_s == 300


def test_retry_after_zero_means_now() -> None:
    decision = policy(1.0).decide(transient(retry_after_s=0.0), attempt=1)
    assert isinstance(decision, Retry)
    assert decision.delay_s == 0.0


def test_retry_after_is_capped() -> None:
    decision = policy(1.0).decide(transient(retry_after_s=86_400), attempt=1)
    assert isinstance(decision, Retry)
    assert decision.delay_s == 600.0
    decision = policy(1.0, retry_after_cap_s=30.0).decide(transient(retry_after_s=45), attempt=1)
    assert isinstance(decision, Retry)
    assert decision.delay_s == 30.0


def test_negative_retry_after_is_clamped_to_zero() -> None:
    decision = policy(1.0).decide(transient(retry_after_s=-5), attempt=1)
    assert isinstance(decision, Retry)
    assert decision.delay_s == 0.0


def test_gives_up_when_attempts_are_used_up() -> None:
    p = policy(1.0, max_attempts=3)
    assert isinstance(p.decide(transient(), attempt=2), Retry)
    at_limit = p.decide(transient(), attempt=3)
    assert isinstance(at_limit, GiveUp)
    assert "3" in at_limit.reason
    assert isinstance(p.decide(transient(), attempt=4), GiveUp)


def test_retry_after_does_not_bypass_max_attempts() -> None:
    p = policy(1.0, max_attempts=2)
    assert isinstance(p.decide(transient(retry_after_s=1), attempt=2), GiveUp)


def test_max_attempts_one_never_retries() -> None:
    assert isinstance(policy(1.0, max_attempts=1).decide(transient(), attempt=1), GiveUp)


@pytest.mark.parametrize(
    "error",
    [
        PolicyRefusal("celebrity_likeness", "refused", soft=False),
        PolicyRefusal("trademark_ip", "refused", soft=True),
        PermanentFalError("fal answered HTTP 400: bad"),
        AccountLocked("fal account is locked"),
        FalError("unclassified"),
    ],
    ids=["refusal", "soft-refusal", "permanent", "locked", "base"],
)
def test_non_transient_errors_give_up_at_first_attempt(error: FalError) -> None:
    decision = policy(1.0, max_attempts=10).decide(error, attempt=1)
    assert isinstance(decision, GiveUp)
    assert type(error).__name__ in decision.reason


def test_from_settings_copies_the_knobs() -> None:
    settings = Settings(
        IMAGEGEN_MAX_ATTEMPTS=7,
        IMAGEGEN_BACKOFF_BASE_S=0.5,
        IMAGEGEN_BACKOFF_CAP_S=9.0,
        IMAGEGEN_RETRY_AFTER_CAP_S=33.0,
    )
    p = RetryPolicy.from_settings(settings)
    assert (p.max_attempts, p.base_s, p.cap_s, p.retry_after_cap_s) == (7, 0.5, 9.0, 33.0)
