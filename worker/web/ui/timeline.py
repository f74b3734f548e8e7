"""A job's life as events: created, each submission to fal and what came of it, the end.

Built from the job row and its attempt rows (``worker.jobs.attempts``: one per POST that
left, with fal's request id, the HTTP status and error of a failed one), so the waits
between a failure and the next submission show as what they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imagegen.models import AttemptOutcome, Job, JobAttempt

_OUTCOME_TEXT = {
    AttemptOutcome.SENDING: "POST on its way (or the worker died while it was)",
    AttemptOutcome.SUBMITTED: "at fal, waiting for the answer",
    AttemptOutcome.SUCCEEDED: "completed at fal",
    AttemptOutcome.REFUSED: "refused by fal",
    AttemptOutcome.TRANSIENT: "failed (transient: retried, or out of attempts)",
    AttemptOutcome.PERMANENT: "failed for good",
    AttemptOutcome.CANCELLED: "cancelled",
    AttemptOutcome.UNKNOWN: "outcome unknown (the answer to the POST never came)",
}


@dataclass(frozen=True)
class Event:
    at: datetime | None
    kind: str
    text: str
    detail: str = ""


def events(job: Job) -> list[Event]:
    found = [Event(job.created_at, "created", "queued")]
    previous_end: datetime | None = None
    for attempt in job.attempt_rows:
        found.extend(_attempt(attempt, previous_end))
        previous_end = attempt.finished_at or previous_end
    if job.finished_at is not None:
        why = job.refusal_category or job.error or ""
        found.append(Event(job.finished_at, "ended", job.status.value, why))
    return found


def _attempt(attempt: JobAttempt, previous_end: datetime | None) -> list[Event]:
    number = attempt.number
    wait = ""
    if previous_end is not None and attempt.started_at is not None:
        wait = f"after a wait of {_seconds(attempt.started_at, previous_end)}"
    out = [Event(attempt.started_at, "submitted", f"submission {number} sent to fal", wait)]
    if attempt.fal_request_id:
        out.append(Event(None, "at_fal", f"fal request {attempt.fal_request_id}"))
    if attempt.finished_at is not None or attempt.outcome is not AttemptOutcome.SUBMITTED:
        out.append(
            Event(
                attempt.finished_at,
                attempt.outcome.value,
                f"submission {number}: {_OUTCOME_TEXT[attempt.outcome]}",
                _problem(attempt),
            )
        )
    return out


def _problem(attempt: JobAttempt) -> str:
    parts = []
    if attempt.http_status is not None:
        parts.append(f"HTTP {attempt.http_status}")
    if attempt.error_type:
        parts.append(attempt.error_type)
    detail: Any = attempt.detail
    if isinstance(detail, dict) and detail.get("message"):
        parts.append(str(detail["message"])[:500])
    if attempt.finished_at is not None and attempt.started_at is not None:
        parts.append(f"took {_seconds(attempt.finished_at, attempt.started_at)}")
    return " · ".join(parts)


def _seconds(later: datetime, earlier: datetime) -> str:
    return f"{max(0.0, (later - earlier).total_seconds()):.1f} s"
