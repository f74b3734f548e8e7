"""Jobs and counts for people: Rich tables on a terminal, tab-separated lines through a pipe
(header line first, nothing cut). Programs use --json. Text from users is escaped on the way
out: no control character (an ESC sequence, a bidi override) reaches the terminal."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from imagegen.worker.constants import SOFT_BLOCK_CATEGORIES

STATUS_STYLE = {
    "queued": "dim",
    "waiting": "dim",
    "submitting": "cyan",
    "at_fal": "cyan",
    "collecting": "cyan",
    "storing": "cyan",
    "succeeded": "green",
    "refused": "yellow",
    "failed": "red",
    "cancelled": "magenta",
}
#: A table this wide keeps its created and attempts columns; a narrower one drops them.
WIDE = 120
_UNPRINTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with control characters, bidi controls and lone surrogates as escapes."""
    return _UNPRINTABLE.sub(lambda m: _NAMED.get(m[0]) or _escape(m[0]), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def write_tsv(console: Console, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Tab-separated lines, header first: every value escaped, none cut or wrapped."""
    for row in (header, *rows):
        console.file.write("\t".join(printable(str(value)) for value in row) + "\n")
    console.file.flush()


def _status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def outcome(job: dict[str, Any]) -> str:
    if job["status"] == "refused":
        soft = " (soft block)" if job["refusal_category"] in SOFT_BLOCK_CATEGORIES else ""
        by = " [pre-filter]" if job.get("refusal_source") == "prefilter" else ""
        return f"{job['refusal_category']}{soft}{by}: {job['refusal_message']}"
    if job["status"] == "succeeded":
        return f"{len(job['images'] or [])} image(s)"
    return job["error"] or ""


def show_jobs(console: Console, rows: list[dict[str, Any]], *, plain: bool) -> None:
    if plain:
        header = ("id", "created", "status", "attempts", "prompt", "outcome")
        write_tsv(
            console,
            header,
            (
                (
                    j["id"],
                    j["created_at"] or "",
                    j["status"],
                    j["attempts"],
                    j["prompt"],
                    outcome(j),
                )
                for j in rows
            ),
        )
        return
    wide = console.width >= WIDE
    table = Table(title=f"{len(rows)} job(s), newest first", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, min_width=36)
    if wide:
        table.add_column("created", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=9)
    if wide:
        table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("prompt", overflow="fold", ratio=1)
    table.add_column("outcome", overflow="fold", ratio=1)
    for job in rows:
        created = [(job["created_at"] or "")[:19]] if wide else []
        attempts = [str(job["attempts"])] if wide else []
        table.add_row(
            job["id"],
            *created,
            _status(job["status"]),
            *attempts,
            Text(_short(job["prompt"], 60)),
            Text(_short(outcome(job), 90)),
        )
    console.print(table)


_FACTS = (
    "id",
    "status",
    "model",
    "params",
    "attempts",
    "fal_request_id",
    "idempotency_key",
    "callback_url",
    "created_at",
    "started_at",
    "finished_at",
    "deadline_at",
)


def _facts(job: dict[str, Any]) -> list[tuple[str, str]]:
    facts = [(k, job[k]) for k in _FACTS if k in job]
    facts = [
        (k, json.dumps(v) if isinstance(v, dict) else ("" if v is None else str(v)))
        for k, v in facts
    ]
    facts += [("prompt", job["prompt"]), ("outcome", outcome(job))]
    facts += [("image", str(image.get("url"))) for image in job["images"] or []]
    return facts


def _submissions(job: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            str(a["number"]),
            a["outcome"],
            str(a["http_status"] or ""),
            a["error_type"] or "",
            a["fal_request_id"] or "",
            a["detail"]["message"] if isinstance(a["detail"], dict) else "",
        )
        for a in job.get("attempt_log", [])
    ]


_SUBMISSION_HEADER = ("#", "outcome", "http", "error type", "fal request id", "detail")


def show_job(console: Console, job: dict[str, Any], *, plain: bool) -> None:
    """The job's facts, one per line, then its submissions to fal."""
    if plain:
        write_tsv(console, ("field", "value"), _facts(job))
        console.file.write("\n")
        write_tsv(console, _SUBMISSION_HEADER, _submissions(job))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in _facts(job):
        if key != "image":
            grid.add_row(key, _status(value) if key == "status" else Text(printable(value)))
    console.print(grid)
    for image in job["images"] or []:  # whole, on a line of their own: a terminal can open them
        console.print(
            Text.assemble(("image ", "bold"), printable(str(image.get("url")))), soft_wrap=True
        )
    table = Table(title="submissions to fal", box=box.SIMPLE_HEAD)
    for name in _SUBMISSION_HEADER:
        no_wrap = name in ("#", "outcome", "http", "fal request id")
        table.add_column(name, no_wrap=no_wrap, overflow="fold")
    for row in _submissions(job):
        table.add_row(*row[:5], Text(_short(row[5], 80)))
    console.print(table)


def show_stats(console: Console, data: dict[str, Any], *, plain: bool) -> None:
    sources = data["by_refusal_source"]
    categories = [
        (
            category + (" (soft)" if category in SOFT_BLOCK_CATEGORIES else ""),
            str(count),
            *(str(sources.get(s, {}).get(category, 0)) for s in ("fal", "prefilter")),
        )
        for category, count in data["by_refusal_category"].items()
    ]
    statuses = [(status, str(count)) for status, count in data["by_status"].items()]
    if plain:
        write_tsv(console, ("status", "jobs"), statuses)
        console.file.write("\n")
        write_tsv(console, ("category", "jobs", "by fal", "by pre-filter"), categories)
        return
    by_status = Table(title=f"{data['total']} job(s) by status", box=box.SIMPLE_HEAD)
    by_status.add_column("status")
    by_status.add_column("jobs", justify="right")
    for status, count in statuses:
        by_status.add_row(_status(status), count)
    by_category = Table(title="refusals by category and source", box=box.SIMPLE_HEAD)
    by_category.add_column("category", overflow="fold")
    for name in ("jobs", "by fal", "by pre-filter"):
        by_category.add_column(name, justify="right", no_wrap=True)
    for row in categories:
        by_category.add_row(*row)
    console.print(by_status)
    console.print(by_category)


def _short(text: str, width: int) -> str:
    text = printable(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"
