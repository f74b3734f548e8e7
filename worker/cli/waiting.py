"""``imagegen enqueue --wait``: follow a job's row until it ends, then say how it ended."""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagegen.models import OPEN_STATUSES
from imagegen.worker.db import session_scope
from imagegen.worker.jobs.queries import get_job, job_to_dict
from imagegen.worker.settings import Settings

#: how often the row is read while waiting (one primary-key SELECT)
POLL_INTERVAL_S = 0.5


class WaitExit(enum.IntEnum):
    """``imagegen enqueue --wait``'s exit code, one per way a job can end (or not)."""

    SUCCEEDED = 0
    REFUSED = 10
    FAILED = 11
    CANCELLED = 12
    #: still queued or in progress when the wait ran out; the job goes on
    TIMEOUT = 13


@dataclass(frozen=True)
class Progress:
    """Where the job is, passed to ``on_progress`` after each read of its row."""

    status: str
    attempts: int
    elapsed_s: float


@dataclass(frozen=True)
class WaitResult:
    exit: WaitExit
    job: dict[str, Any]


def wait_for_outcome(
    job_id: uuid.UUID,
    settings: Settings,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    timeout_s: float | None = None,
) -> WaitResult:
    """Read the job's row every ``POLL_INTERVAL_S`` until it is terminal or ``timeout_s``
    has passed (None: until it ends; the job's deadline bounds that)."""
    started = time.monotonic()
    while True:
        with session_scope(settings.database_url) as session:
            job = job_to_dict(get_job(session=session, job_id=job_id))
        elapsed = time.monotonic() - started
        if on_progress is not None:
            on_progress(Progress(job["status"], job["attempts"], elapsed))
        if job["status"] not in OPEN_STATUSES:
            return WaitResult(WaitExit[job["status"].upper()], job)
        if timeout_s is not None and elapsed >= timeout_s:
            return WaitResult(WaitExit.TIMEOUT, job)
        time.sleep(POLL_INTERVAL_S)


def progress_text(progress: Progress) -> str:
    attempt = f", attempt {progress.attempts}" if progress.attempts > 1 else ""
    return f"{progress.status}{attempt} ({progress.elapsed_s:.0f} s)"


def outcome_line(result: WaitResult) -> str:
    """One line for people: the outcome and what to do with it."""
    job = result.job
    if result.exit is WaitExit.SUCCEEDED:
        urls = " ".join(image.get("url", "") for image in job["images"] or [])
        return f"succeeded: {urls}".rstrip()
    if result.exit is WaitExit.REFUSED:
        return (
            f"refused ({job['refusal_category']}, by {job['refusal_source'] or 'fal'}): "
            f"{job['refusal_message']}"
        )
    if result.exit is WaitExit.FAILED:
        return f"failed: {job['error']} (imagegen retry {job['id']} tries again)"
    if result.exit is WaitExit.CANCELLED:
        return "cancelled"
    return f"still {job['status']}; the job goes on (imagegen job {job['id']})"
