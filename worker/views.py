"""Rich renderings of jobs and counts for people (programs use --json)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from worker.constants import SOFT_BLOCK_CATEGORIES

STATUS_STYLE = {
    "queued": "dim",
    "running": "cyan",
    "succeeded": "green",
    "refused": "yellow",
    "failed": "red",
    "cancelled": "magenta",
}


def _status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def _why(job: dict[str, Any]) -> str:
    if job["status"] == "refused":
        soft = " (soft block)" if job["refusal_category"] in SOFT_BLOCK_CATEGORIES else ""
        by = " [pre-filter]" if job.get("refusal_source") == "prefilter" else ""
        return f"{job['refusal_category']}{soft}{by}: {job['refusal_message']}"
    if job["status"] == "succeeded":
        return f"{len(job['images'] or [])} image(s)"
    return job["error"] or ""


def jobs_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} job(s), newest first")
    for name in ("id", "created", "status", "attempts", "prompt", "outcome"):
        table.add_column(name, overflow="fold")
    for job in rows:
        table.add_row(
            job["id"],
            (job["created_at"] or "")[:19],
            _status(job["status"]),
            str(job["attempts"]),
            Text(_short(job["prompt"], 40)),
            Text(_short(_why(job), 90)),
        )
    return table


def job_view(job: dict[str, Any]) -> Group:
    facts = Table.grid(padding=(0, 2))
    for key in (
        "id",
        "status",
        "model",
        "params",
        "attempts",
        "fal_request_id",
        "created_at",
        "started_at",
        "finished_at",
    ):
        value = job[key]
        facts.add_row(
            Text(key, style="bold"), _status(value) if key == "status" else Text(str(value))
        )
    facts.add_row(Text("prompt", style="bold"), Text(job["prompt"]))
    facts.add_row(Text("outcome", style="bold"), Text(_why(job)))
    for image in job["images"] or []:
        facts.add_row(Text("image", style="bold"), Text(str(image.get("url"))))
    attempts = Table(title="submissions to fal")
    for name in ("#", "outcome", "http", "error type", "fal request id", "detail"):
        attempts.add_column(name, overflow="fold")
    for a in job.get("attempt_log", []):
        detail = a["detail"]["message"] if isinstance(a["detail"], dict) else ""
        attempts.add_row(
            str(a["number"]),
            a["outcome"],
            str(a["http_status"] or ""),
            a["error_type"] or "",
            a["fal_request_id"] or "",
            Text(_short(detail, 80)),
        )
    return Group(facts, attempts)


def stats_tables(data: dict[str, Any]) -> list[Table]:
    by_status = Table(title=f"{data['total']} job(s) by status")
    by_status.add_column("status")
    by_status.add_column("jobs", justify="right")
    for status, count in data["by_status"].items():
        by_status.add_row(_status(status), str(count))
    by_category = Table(title="refusals by category and source")
    by_category.add_column("category")
    by_category.add_column("jobs", justify="right")
    by_category.add_column("by fal", justify="right")
    by_category.add_column("by pre-filter", justify="right")
    sources = data["by_refusal_source"]
    for category, count in data["by_refusal_category"].items():
        soft = " (soft)" if category in SOFT_BLOCK_CATEGORIES else ""
        fal, prefilter = (sources.get(s, {}).get(category, 0) for s in ("fal", "prefilter"))
        by_category.add_row(category + soft, str(count), str(fal), str(prefilter))
    return [by_status, by_category]


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
