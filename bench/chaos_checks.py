"""The chaos run's verdict: what the job table and the emulator saw, checked as invariants.

Split out of bench/chaos.py (the run itself: workers, kills, sweeps); unchanged behaviour.
Also the scenarios of the random-kill run and the figures of the mass kill (`mass_figures`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from imagegen.worker.db import get_engine

TERMINAL = frozenset({"succeeded", "refused", "failed", "cancelled"})
console = Console()


@dataclass(frozen=True)
class Scenario:
    kind: str  # ok | refusal | transient | failing
    directive: str | None  # what goes inside [[fal:...]], None for none
    expect: str  # the terminal status the scenario should end in


CATEGORIES: tuple[str, ...] = ("celebrity_likeness", "trademark_ip", "violence_named_individual")
CATEGORIES += ("hate_protected_group", "self_harm_instructions", "chaos_unknown_category")
TRANSIENT = ("429:1", "503json", "drop", "502", "runner-disconnected", "slow:5", "hang")


def _latency(rng: random.Random) -> str:
    return f"+latency:{rng.uniform(0.5, 3.0):.1f}"


def draw_scenario(rng: random.Random) -> Scenario:
    roll, ok = rng.random(), "ok" + (_latency(rng) if rng.random() < 0.4 else "")
    if roll < 0.55:
        return Scenario("ok", None if ok == "ok" else ok, "succeeded")
    if roll < 0.70:
        step = f"{rng.choice(('refuse', 'late-refuse'))}:{rng.choice(CATEGORIES)}"
        late = step.startswith("late") and rng.random() < 0.5
        return Scenario("refusal", step + (_latency(rng) if late else ""), "refused")
    if roll < 0.90:
        return Scenario("transient", f"{rng.choice(TRANSIENT)},{ok}", "succeeded")
    return Scenario("failing", "500", "failed")


@dataclass
class Drive:
    sweeps: int = 0
    republished: int = 0
    expired: int = 0
    elapsed_s: float = 0.0
    timed_out: bool = False


class Stats(Protocol):
    """The emulator, in-process (FalEmulator) or its own process (bench.host.Emulator)."""

    def stats(self) -> dict[str, Any]: ...


class Fleet(Protocol):
    """What the report reads of bench.chaos's worker fleet."""

    started: int
    kills: int
    crashes: int


@dataclass
class Facts:
    id: str
    prompt: str
    status: str
    attempts: int
    rows: int
    succeeded_rows: int
    sending_rows: int  # 'unknown' (or 'sending'): the worker died during its submit POST
    submissions: int  # what the emulator counted for the job's prompt
    expect: str
    took_s: float  # created to finished (0 while open)
    history: str  # its job_attempts rows: number, outcome, HTTP status, error type, start

    def __str__(self) -> str:
        return (
            f"{self.id} status={self.status} (scenario: {self.expect}) attempts={self.attempts} "
            f"attempt_rows={self.rows} succeeded_rows={self.succeeded_rows} "
            f"fal_submissions={self.submissions} took={self.took_s:.1f}s prompt={self.prompt!r}"
            f"\n      job_attempts: {self.history}"
        )


FACTS_SQL = """
SELECT j.id::text AS id, j.prompt, j.status, j.attempts, count(a.id) AS rows,
       count(a.id) FILTER (WHERE a.outcome = 'succeeded') AS succeeded_rows,
       count(a.id) FILTER (WHERE a.outcome IN ('sending', 'unknown')) AS sending_rows,
       coalesce(extract(epoch FROM j.finished_at - j.created_at), 0)::float AS took_s,
       coalesce(string_agg(
         '#' || a.number || ' ' || a.outcome || coalesce(' http ' || a.http_status, '')
         || coalesce(' ' || a.error_type, '') || CASE WHEN a.fal_request_id IS NULL
         THEN ' (no request id)' ELSE '' END || ' begun '
         || to_char(a.started_at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS'),
         '; ' ORDER BY a.number), 'none') AS history
FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id
GROUP BY j.id, j.prompt, j.status, j.attempts ORDER BY j.created_at
"""


def collect(url: str, jobs: dict[str, Scenario], emulator: Stats) -> list[Facts]:
    by_prompt: dict[str, int] = emulator.stats()["submissions_by_prompt"]
    with get_engine(url).connect() as conn:
        rows = [dict(row) for row in conn.execute(text(FACTS_SQL)).mappings()]
    expect = {job_id: scenario.expect for job_id, scenario in jobs.items()}
    return [
        Facts(**row, submissions=by_prompt.get(row["prompt"], 0), expect=expect.get(row["id"], "?"))
        for row in rows
    ]


@dataclass
class Invariant:
    name: str
    expected: str
    observed: str
    bad: list[Facts]
    holds: bool
    info: bool = False  # reported, not part of the verdict

    @property
    def verdict(self) -> str:
        return "PASS" if self.holds else "INFO" if self.info else "FAIL"


def check(facts: list[Facts], n: int) -> list[Invariant]:
    def rule(name: str, bad_if: Callable[[Facts], bool], among: list[Facts]) -> Invariant:
        bad = [f for f in among if bad_if(f)]
        of = f" of {len(among)}"
        return Invariant(name, "0" + of, f"{len(bad)}{of}", bad, not bad)

    done = [f for f in facts if f.status in TERMINAL]
    prompts = Counter(f.prompt for f in facts)
    refused = [f for f in facts if f.status == "refused"]
    surprises = rule("status as its scenario predicts", lambda f: f.status != f.expect, facts)
    surprises.info = True
    cut = rule("submits cut by a kill (unknown; not resent)", lambda f: f.sending_rows > 0, facts)
    cut.info = True
    return [
        Invariant(
            "every job terminal",
            str(n),
            str(len(done)),
            [f for f in facts if f.status not in TERMINAL],
            len(done) == n == len(facts),
        ),
        rule(
            "jobs.attempts == emulator submissions (± submits cut by a kill)",
            lambda f: not f.attempts - f.sending_rows <= f.submissions <= f.attempts,
            facts,
        ),
        rule(
            "jobs.attempts == emulator submissions, exactly",
            lambda f: f.attempts != f.submissions,
            [f for f in facts if f.sending_rows == 0],
        ),
        rule(
            "≤ 1 succeeded attempt (succeeded: = 1)",
            lambda f: f.succeeded_rows > 1 or (f.status == "succeeded") != (f.succeeded_rows == 1),
            facts,
        ),
        rule("refused jobs submitted exactly once", lambda f: f.submissions != 1, refused),
        Invariant(
            "no duplicate rows (jobs, distinct prompts)",
            f"{n}, {n}",
            f"{len(facts)}, {len(prompts)}",
            [f for f in facts if prompts[f.prompt] > 1],
            len(facts) == n == len(prompts),
        ),
        rule("jobs.attempts == job_attempts rows", lambda f: f.attempts != f.rows, facts),
        surprises,
        cut,
    ]


def render(invariants: list[Invariant], facts: list[Facts], fleet: Fleet, run: Drive) -> None:
    table = Table(title="chaos invariants")
    for column in ("invariant", "expected", "observed", "verdict"):
        table.add_column(column)
    colour = {"PASS": "green", "FAIL": "bold red", "INFO": "yellow"}
    for inv in invariants:
        table.add_row(inv.name, inv.expected, inv.observed, f"[{colour[inv.verdict]}]{inv.verdict}")
    console.print(table)
    for inv in (inv for inv in invariants if inv.bad):
        console.print(f"[bold]{inv.verdict} {inv.name}[/] (first 10 of {len(inv.bad)}):")
        for fact in inv.bad[:10]:
            console.print(f"  {fact}", soft_wrap=True, highlight=False, markup=False)
    counts = Counter(f.status for f in facts)
    summary = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    slowest = max(facts, key=lambda f: f.took_s, default=None)
    orphans = sum(f.sending_rows for f in facts)
    if slowest is not None:
        console.print(f"slowest job: {slowest}", soft_wrap=True, highlight=False, markup=False)
    console.print(
        f"jobs: {summary} | {run.elapsed_s:.1f}s{' (TIMED OUT)' if run.timed_out else ''} | "
        f"kills {fleet.kills}, workers started {fleet.started}, unexpected exits "
        f"{fleet.crashes} | sweeps {run.sweeps}, republished {run.republished}, "
        f"expired {run.expired} | submits cut by a kill (unknown): {orphans}",
        soft_wrap=True,
        highlight=False,
    )


def duplicate_submissions(facts: list[Facts]) -> int:
    """Submits the emulator saw beyond each job's attempt rows (at least one), as
    bench/open_figures.py counts them: every prompt is unique, so per prompt is per job."""
    return sum(max(0, f.submissions - max(1, f.rows)) for f in facts)


def mass_figures(
    facts: list[Facts], jobs: int, drain_s: float | None, latency_s: float
) -> dict[str, Any]:
    """The mass kill's verdict keys: ``drain_s`` is restart -> the last job terminal (None
    when no job ended after the restart); within target: nothing lost, drained in 120 s + L."""
    lost = sum(1 for f in facts if f.status not in TERMINAL) + max(0, jobs - len(facts))
    drain = None if drain_s is None else round(max(0.0, drain_s), 1)
    return {
        "lost": lost,
        "duplicate_submissions": duplicate_submissions(facts),
        "drain_after_restart_s": drain,
        "latency_s": latency_s,
        "within_target": lost == 0 and drain is not None and drain <= 120 + latency_s,
        "jobs": jobs,
        "outcomes": dict(sorted(Counter(f.status for f in facts).items())),
        "submits_cut_by_kill": sum(1 for f in facts if f.sending_rows > 0),
    }
