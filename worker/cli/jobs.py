"""Commands about jobs: enqueue, job, jobs, stats, cancel."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from models import JobStatus
from worker.cli.app import cli, db_session, out
from worker.cli.errors import errors
from worker.errors import JobNotFound, JobRequestError


@cli.command()
def enqueue(
    prompt: str,
    size: Annotated[str | None, typer.Option(help="Preset name or WIDTHxHEIGHT")] = None,
    quality: Annotated[str | None, typer.Option(help="auto, low, medium or high")] = None,
    num_images: Annotated[int | None, typer.Option(help="1 to 4")] = None,
    output_format: Annotated[str | None, typer.Option(help="jpeg, png or webp")] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Queue a generation; prints the job id alone."""
    from worker.api import enqueue as enqueue_job

    with errors():
        job_id = enqueue_job(
            prompt,
            size=size,
            quality=quality,
            num_images=num_images,
            output_format=output_format,
            idempotency_key=idempotency_key,
        )
    typer.echo(str(job_id))


@cli.command()
def job(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One job, with every submission to fal."""
    from worker.queries import get_job, job_to_dict

    with errors():
        uid = _job_uuid(job_id)
        with db_session() as session:
            data = job_to_dict(get_job(session=session, job_id=uid), with_attempts=True)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from worker.views import job_view

    out.print(job_view(data))


@cli.command()
def jobs(
    status: Annotated[JobStatus | None, typer.Option(case_sensitive=False)] = None,
    category: Annotated[str | None, typer.Option(help="Refusal category")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, or 30m / 2h / 7d ago")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent jobs, newest first, filtered by status, refusal category and age."""
    from worker.queries import job_to_dict, list_jobs

    with errors():
        since_at = _parse_since(since) if since else None
        with db_session() as session:
            rows = [
                job_to_dict(j)
                for j in list_jobs(
                    session=session, status=status, category=category, since=since_at, limit=limit
                )
            ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from worker.views import jobs_table

    out.print(jobs_table(rows))


@cli.command()
def stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Counts by status and by refusal category."""
    from worker.queries import stats as job_stats

    with errors(), db_session() as session:
        data = job_stats(session=session)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from worker.views import stats_tables

    for table in stats_tables(data):
        out.print(table)


@cli.command()
def cancel(job_id: str) -> None:
    """Cancel a job (a queued one never reaches fal; a running one is cancelled at fal)."""
    from worker.api import cancel as cancel_job

    with errors():
        status = cancel_job(_job_uuid(job_id))
    typer.echo(status)


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(f"{job_id!r} is not a job id (expected a UUID)") from None


def _parse_since(value: str) -> datetime:
    units: dict[str, Callable[[int], timedelta]] = {
        "m": lambda n: timedelta(minutes=n),
        "h": lambda n: timedelta(hours=n),
        "d": lambda n: timedelta(days=n),
    }
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - units[value[-1]](int(value[:-1]))
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise JobRequestError(f"--since {value!r}: use an ISO time or 30m, 2h, 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
