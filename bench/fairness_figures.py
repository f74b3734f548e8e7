"""bench.fairness's figures, from the job table and the slot samples of one run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.pool import NullPool

from imagegen.models import utcnow
from imagegen.worker.jobs.fairshare import holds_slot
from imagegen.worker.jobs.state import JOBS

#: every submit that left (an attempt row), with its job's tenant and creation
_SUBMITS = text(
    """
    SELECT t.name, a.started_at FROM job_attempts a
    JOIN jobs j ON j.id = a.job_id JOIN tenants t ON t.id = j.tenant_id
    ORDER BY a.started_at
    """
)
_CREATED = text(
    """
    SELECT t.name, j.created_at, (
        SELECT min(a.started_at) FROM job_attempts a WHERE a.job_id = j.id
    ) FROM jobs j JOIN tenants t ON t.id = j.tenant_id
    """
)


def held_by_table(db: Connection, lease_s: float) -> int:
    """Slots held by the job table (the granter's rule), to compare with Redis's count."""
    since = utcnow() - timedelta(seconds=lease_s)
    query = select(func.count()).select_from(JOBS).where(holds_slot(JOBS, since))
    return int(db.execute(query).scalar_one())


@dataclass
class Samples:
    """Read every ``every_s`` during a run: slots held in Redis and by the job table."""

    #: (seconds since the first enqueue, slots held in Redis, slots held by the table)
    rows: list[tuple[float, int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    start: datetime  # the first enqueue (A's)
    end: datetime  # when the run stopped watching
    kill_t: float | None  # seconds after start when a worker was SIGKILLed
    lease_s: float


def figures(url: str, samples: Samples, window: Window, cap: int) -> dict[str, Any]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as db:
            submits = [(n, at) for n, at in db.execute(_SUBMITS) if at <= window.end]
            created = list(db.execute(_CREATED))
    finally:
        engine.dispose()
    out: dict[str, Any] = _b_figures(submits, created, window)
    out["c_submit_wait_p95_s"] = _c_wait_p95(created, window)
    out["cap_utilisation"] = _utilisation(samples, cap)
    out.update(_leaks(samples, window))
    out["submits"] = {name: sum(1 for n, _ in submits if n == name) for name in ("a", "b", "c")}
    out["submits_per_5s"] = _per_5s(submits, window)
    return out


def _per_5s(submits: list[tuple[str, datetime]], window: Window) -> list[list[int]]:
    """[t, a, b, c]: submits of each tenant in each 5 s of the run."""
    rows: dict[int, list[int]] = {}
    for name, at in submits:
        t = int((at - window.start).total_seconds() // 5) * 5
        row = rows.setdefault(t, [t, 0, 0, 0])
        row[1 + "abc".index(name)] += 1
    return [rows[t] for t in sorted(rows)]


def _b_figures(
    submits: list[tuple[str, datetime]], created: list[Any], window: Window
) -> dict[str, Any]:
    """B's share of all submits while B had queued work, and how soon its first one left."""
    b_created = [row[1] for row in created if row[0] == "b"]
    b_subs = [at for name, at in submits if name == "b"]
    if not b_created:
        return {"b_share": None, "b_first_submit_s": None}
    b_start = min(b_created)
    b_all_out = len(b_subs) >= len(b_created)
    b_end = max(b_subs) if b_all_out and b_subs else window.end
    during = [name for name, at in submits if b_start <= at <= b_end]
    share = during.count("b") / len(during) if during else 0.0
    first = (min(b_subs) - b_start).total_seconds() if b_subs else None
    return {
        "b_share": round(share, 3),
        "b_first_submit_s": None if first is None else round(first, 2),
        "b_all_submitted_in_s": round((b_end - b_start).total_seconds(), 1) if b_all_out else None,
    }


def _c_wait_p95(created: list[Any], window: Window) -> float | None:
    """From C's enqueue to its submit; a job not submitted by the end counts till the end."""
    waits = [
        ((first or window.end) - at).total_seconds()
        for name, at, first in created
        if name == "c" and at <= window.end
    ]
    if not waits:
        return None
    waits.sort()
    return round(waits[min(len(waits) - 1, int(0.95 * len(waits)))], 2)


def _utilisation(samples: Samples, cap: int) -> float | None:
    """Slots held / cap, averaged after the first 5 s (the cap fills up first)."""
    held = [redis_held for t, redis_held, _ in samples.rows if t >= 5.0]
    return round(statistics.fmean(held) / cap, 3) if held else None


def _leaks(samples: Samples, window: Window) -> dict[str, Any]:
    """After a worker was killed: slots Redis still counts that no job holds, once the
    killed worker's leases ran out (the least over the last samples: a grant in transit
    shows as one for a moment)."""
    if window.kill_t is None:
        return {"slots_leaked": None}
    after = window.kill_t + window.lease_s + 10.0
    late = [redis_held - table for t, redis_held, table in samples.rows if t >= after]
    if not late:
        return {"slots_leaked": None, "slots_leaked_note": "the run ended before the leases"}
    return {"slots_leaked": max(0, min(late[-20:]))}
