"""The retry policy, as data: one frozen object and one method that decides."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from imagegen.worker.errors import FalError, TransientFalError
from imagegen.worker.settings import Settings


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay_s`` seconds."""

    delay_s: float
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """Stop: the job ends with this error."""

    reason: str


Decision = Retry | GiveUp


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter; Retry-After wins when fal sends one.

    Only ``TransientFalError`` is retried. Refusals, permanent errors and account locks
    fail at once. ``attempt`` is the number of tries already made (1 after the first).
    """

    max_attempts: int = 5
    base_s: float = 2.0
    cap_s: float = 120.0
    retry_after_cap_s: float = 600.0
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            base_s=settings.backoff_base_s,
            cap_s=settings.backoff_cap_s,
            retry_after_cap_s=settings.retry_after_cap_s,
        )

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0))
        return ceiling * self.rand()

    def decide(self, error: FalError, attempt: int) -> Decision:
        if not isinstance(error, TransientFalError):
            return GiveUp(f"{type(error).__name__}: not retried")
        if attempt >= self.max_attempts:
            return GiveUp(f"gave up after {attempt} attempts (IMAGEGEN_MAX_ATTEMPTS)")
        if error.retry_after_s is not None:
            delay = min(max(error.retry_after_s, 0.0), self.retry_after_cap_s)
            return Retry(delay, f"Retry-After {error.retry_after_s:g}s")
        return Retry(self.backoff_s(attempt), "backoff")
