"""What a stage run came to: its Celery task's result (Flower shows it) or a retry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """``summary``: ``succeeded``, ``refused:<category>``, ``failed``, ``cancelled``,
    ``at_fal:<request id> since <time>`` (submitted), ``skipped`` (nothing to do here).

    ``retry_in``: run this task again after that many seconds (the job was requeued, or
    its collect released). ``reason``: why a failed job failed, or why it is retried.
    """

    summary: str
    retry_in: float | None = None
    reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.summary == "cancelled"

    @property
    def failed(self) -> bool:
        return self.summary == "failed"


SKIPPED = Outcome("skipped")
CANCELLED = Outcome("cancelled")
