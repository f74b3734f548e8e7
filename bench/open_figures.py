"""The open-loop run's figures, from its samples and the job table: pure functions.

Times are seconds since the first arrival tick (``t0``). The steady window is the last half
of the arrivals, [duration / 2, duration]: by then a run with latency < duration / 2 has as
many jobs at fal as it will have.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"succeeded", "refused", "failed", "cancelled"})
TICK_S = 0.1  # arrivals: one enqueue_many batch every 100 ms, like a web app's requests
#: the keys the last JSON line always has (issue 22), in this order
KEYS = (
    "mode",
    "rate",
    "duration_s",
    "latency_s",
    "fal_concurrency",
    "enqueued",
    "completed_per_s",
    "in_flight_p50",
    "submit_wait_p95_s",
    "cpu_ms_per_job",
    "emulator_cpu_ms_per_job",
    "status_requests_per_job",
    "peak_rss_mb",
    "pg_connections_peak",
    "lost",
    "duplicate_submissions",
    "flower_outcomes_missing",
)


def arrivals_due(rate: float, elapsed_s: float, duration_s: float) -> int:
    """Jobs that should have arrived ``elapsed_s`` into the run: floor(rate x elapsed), at
    most floor(rate x duration) (the whole run)."""
    elapsed_s = min(elapsed_s, duration_s)
    return max(0, math.floor(rate * elapsed_s + 1e-9))


def schedule(rate: float, duration_s: float, tick_s: float = TICK_S) -> list[int]:
    """The batch sizes, tick by tick, of a run on time (a late tick sends what is due)."""
    ticks = round(duration_s / tick_s)
    due = [arrivals_due(rate, k * tick_s, duration_s) for k in range(ticks + 1)]
    return [b - a for a, b in itertools.pairwise(due)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1), linear between closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Tick:
    """One sample a second."""

    t: float
    in_flight: int  # queued + in progress at the emulator: jobs at fal
    cpu_s: float  # every imagegen process started (workers, pollers, API), so far
    emulator_cpu_s: float
    rss_mb: float  # the same processes, now
    pg_connections: int  # backends on the bench database (the bench's own excluded)
    statuses: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JobFacts:
    """One job, from the job table at the end (offsets since t0; None: not yet)."""

    id: str
    prompt: str
    status: str
    created_s: float
    finished_s: float | None
    first_submit_s: float | None  # the first job_attempts row's started_at: the POST
    attempt_rows: int


def steady(ticks: Iterable[Tick], duration_s: float) -> list[Tick]:
    return [tick for tick in ticks if duration_s / 2 <= tick.t <= duration_s]


def completed_per_s(jobs: Iterable[JobFacts], duration_s: float) -> float:
    """Jobs that ended inside the steady window, a second."""
    start, window = duration_s / 2, duration_s / 2
    ended = sum(1 for j in jobs if j.finished_s is not None and start <= j.finished_s <= duration_s)
    return ended / window if window > 0 else 0.0


def submit_waits(jobs: Iterable[JobFacts]) -> list[float]:
    """Enqueue to the first POST at fal, for each job that got that far."""
    return [j.first_submit_s - j.created_s for j in jobs if j.first_submit_s is not None]


def duplicate_submissions(jobs: Iterable[JobFacts], by_prompt: Mapping[str, int]) -> int:
    """Submits the emulator saw beyond the job's own attempts (at least one each).

    Every job's prompt is unique in a run, so the emulator's count per prompt is its count
    per job; a job that legitimately retried has one attempt row per submission.
    """
    return sum(max(0, by_prompt.get(j.prompt, 0) - max(1, j.attempt_rows)) for j in jobs)


def lost(enqueued: Iterable[str], jobs: Iterable[JobFacts]) -> int:
    """Jobs not terminal after the drain, plus jobs enqueued but missing from the table."""
    by_id = {j.id: j for j in jobs}
    return sum(1 for i in enqueued if i not in by_id or by_id[i].status not in TERMINAL)


def per_job(value: float, jobs: int) -> float | None:
    return value / jobs if jobs else None


def status_requests_per_job(requests: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Status polls a request fal completed (the emulator's per-request counters)."""
    polls = [int(r["status_polls"]) for r in requests.values() if r.get("state") == "COMPLETED"]
    return sum(polls) / len(polls) if polls else None


def _result(task: Mapping[str, Any]) -> str:
    return str(task.get("result") or "").strip("'\"")


def shows_outcome(status: str, task: Mapping[str, Any]) -> bool:
    """Does this Flower task show the job's terminal ``status``?"""
    state, result = task.get("state"), _result(task)
    if status == "succeeded":
        return state == "SUCCESS" and result == "succeeded"
    if status == "refused":
        return state == "SUCCESS" and result.startswith("refused:")
    if status == "failed":
        return state == "FAILURE" or result.startswith("failed:")
    if status == "cancelled":
        return state == "REVOKED" or result == "cancelled"
    return False


def flower_outcomes_missing(
    statuses: Mapping[str, str], tasks: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Jobs none of whose tasks (``<job id>``, ``<job id>/submit-<n>``, ``<job id>/collect-<n>``)
    shows the job's terminal outcome in Flower; non-terminal jobs count as missing too."""
    by_job: dict[str, list[Mapping[str, Any]]] = {}
    for task_id, task in tasks.items():
        by_job.setdefault(task_id.split("/", 1)[0], []).append(task)
    return [
        job_id
        for job_id, status in statuses.items()
        if not any(shows_outcome(status, task) for task in by_job.get(job_id, []))
    ]


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Outcome:
    """What a run measured, beside its ticks and jobs."""

    mode: str  # polling | webhook | naive
    enqueued: list[str]
    cpu_s: float  # imagegen processes, first arrival to the end of the drain
    emulator_cpu_s: float
    requests: Mapping[str, Mapping[str, Any]]  # the emulator's, by request id
    by_prompt: Mapping[str, int]  # the emulator's submits per prompt
    flower_missing: int | None = None
    drained: bool | None = True  # every job ended in the drain (None: naive, time-boxed)
    extra: dict[str, Any] = field(default_factory=dict)


def summary(args: Any, outcome: Outcome, ticks: list[Tick], jobs: list[JobFacts]) -> dict[str, Any]:
    """The JSON line: KEYS first; ``lost`` and ``duplicate_submissions`` are None for the
    naive pattern (time-boxed: it is stopped, not drained, and keeps no attempt rows)."""
    window = steady(ticks, args.duration)
    ended = sum(1 for j in jobs if j.status in TERMINAL)
    naive = outcome.mode == "naive"
    data: dict[str, Any] = {
        "mode": outcome.mode,
        "rate": args.rate,
        "duration_s": args.duration,
        "latency_s": args.latency,
        "fal_concurrency": args.fal_concurrency,
        "enqueued": len(outcome.enqueued),
        "completed_per_s": round(completed_per_s(jobs, args.duration), 3),
        "in_flight_p50": rounded(percentile([t.in_flight for t in window], 0.5), 1),
        "submit_wait_p95_s": rounded(percentile(submit_waits(jobs), 0.95), 3),
        "cpu_ms_per_job": rounded(per_job(outcome.cpu_s * 1e3, ended), 3),
        "emulator_cpu_ms_per_job": rounded(per_job(outcome.emulator_cpu_s * 1e3, ended), 3),
        "status_requests_per_job": rounded(status_requests_per_job(outcome.requests), 3),
        "peak_rss_mb": round(max((t.rss_mb for t in ticks), default=0.0), 1),
        "pg_connections_peak": max((t.pg_connections for t in ticks), default=0),
        "lost": None if naive else lost(outcome.enqueued, jobs),
        "duplicate_submissions": None if naive else duplicate_submissions(jobs, outcome.by_prompt),
        "flower_outcomes_missing": outcome.flower_missing,
    }
    data["terminal"] = ended
    data["drained"] = outcome.drained
    return data | outcome.extra
