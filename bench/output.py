"""Printing bench results: number formats, log events, the closed loop's timeline table."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from bench.runs import Run

console = Console(width=130)
NONE = "-"


def fmt(value: float | int | None, spec: str = ".1f", prefix: str = "") -> str:
    return NONE if value is None else f"{prefix}{value:{spec}}"


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def print_events(label: str, events: Counter[str], source: str = "worker logs") -> None:
    if not events:
        console.print(f"{label} {source}: no warnings or errors", highlight=False)
        return
    total = sum(events.values())
    console.print(f"{label} {source}: {total} warning/error lines", highlight=False)
    for line, n in events.most_common(8):
        console.print(f"  {n:6d} x {line}", soft_wrap=True, highlight=False, markup=False)


def timeline_table(run: Run) -> Table:
    """--timeline: seconds in which something happened, with the requests fal has finished
    whose outcome is not recorded yet (their fal slot may already be free)."""
    grid = Table(title="ours, second by second since the first enqueue (from the job table)")
    for name in ("t, s", "claimed", "sent to fal", "done at fal", "finished", "done, unrecorded"):
        grid.add_column(name, justify="right")
    done = finished = 0
    for second in run.timeline:
        done, finished = done + second.fal_done, finished + second.finished
        counts = (second.claimed, second.sent, second.fal_done, second.finished)
        grid.add_row(str(second.t), *map(str, counts), str(max(0, done - finished)))
    return grid
