"""The ``imagegen`` command: enqueue, inspect and operate. Rich for people, --json for programs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from models import JobStatus
from worker.commands import register
from worker.errors import ImagegenError, JobNotFound, JobRequestError

cli = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
db_cli = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
account_cli = typer.Typer(help="The fal account switch.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(account_cli, name="account")
out = Console()
err = Console(stderr=True, soft_wrap=True)


@contextmanager
def _errors() -> Iterator[None]:
    """Print our errors as one clear line and exit non-zero; no stack traces for users."""
    try:
        yield
    except (JobRequestError, JobNotFound) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except ValidationError as exc:  # the environment (Settings) is invalid
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]configuration error:[/red] {problems}", highlight=False)
        raise typer.Exit(2) from None
    except ImagegenError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _settings() -> Any:
    from worker.settings import get_settings

    return get_settings()


def _session() -> Any:
    from worker.db import session_scope

    return session_scope(_settings().database_url)


@cli.command()
def enqueue(
    prompt: str,
    size: Annotated[str | None, typer.Option(help="Preset name or WIDTHxHEIGHT")] = None,
    quality: Annotated[str | None, typer.Option(help="auto, low, medium or high")] = None,
    num_images: Annotated[int | None, typer.Option(help="1 to 4")] = None,
    output_format: Annotated[str | None, typer.Option(help="jpeg, png or webp")] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the outcome (exit code: see docs)")] = False,
    wait_timeout: Annotated[float | None, typer.Option(min=0, help="Seconds to wait")] = None,
) -> None:
    """Queue a generation; prints the job id alone (--wait: then follows it on stderr)."""
    from worker.api import enqueue as enqueue_job

    with _errors():
        job_id = enqueue_job(
            prompt,
            size=size,
            quality=quality,
            num_images=num_images,
            output_format=output_format,
            idempotency_key=idempotency_key,
        )
    typer.echo(str(job_id))
    if wait:
        from worker.commands.verbs import wait_and_report

        raise typer.Exit(wait_and_report(job_id, wait_timeout))


@cli.command()
def job(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One job, with every submission to fal."""
    from worker.queries import get_job, job_to_dict

    with _errors():
        uid = _job_uuid(job_id)
        with _session() as session:
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

    with _errors():
        since_at = _parse_since(since) if since else None
        with _session() as session:
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

    with _errors(), _session() as session:
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

    with _errors():
        status = cancel_job(_job_uuid(job_id))
    typer.echo(status)


@cli.command()
def sweep() -> None:
    """Re-publish jobs whose broker message was lost; fail jobs past their deadline."""
    from worker.celery_app import app
    from worker.sweeper import sweep as sweep_jobs

    with _errors():
        report = sweep_jobs(_settings(), app)
    err.print(f"republished {len(report.republished)}, failed past deadline {len(report.expired)}")


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(f"{job_id!r} is not a job id (expected a UUID)") from None


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the job table to the latest schema."""
    from worker.db import upgrade

    with _errors():
        upgrade(_settings().database_url, revision)
    err.print(f"database at {revision}")


@db_cli.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Migrate down to REVISION (``base`` drops every table)."""
    from worker.db import downgrade

    with _errors():
        downgrade(_settings().database_url, revision)
    err.print(f"database at {revision}")


@account_cli.command("unlock")
def account_unlock() -> None:
    """Clear the account-locked switch after fixing the fal account."""
    from worker.account import AccountGuard

    settings = _settings()
    AccountGuard.for_url(settings.redis_url, settings.account_lock_ttl_s).unlock()
    err.print("fal account switch cleared: workers submit again")


@cli.command("fal-emulator")
def fal_emulator(
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 8443,
    host: str = "127.0.0.1",
    latency: Annotated[float, typer.Option(help="Seconds per generation")] = 2.0,
    concurrency: Annotated[int | None, typer.Option(help="Account concurrency limit")] = None,
    cert_dir: Annotated[str | None, typer.Option(help="Where to write ca.pem")] = None,
    round_trip: Annotated[
        float,
        typer.Option(min=0, help="Seconds added to every answer (network and fal's handling)"),
    ] = 0.0,
) -> None:
    """Serve fal's queue protocol over HTTPS locally (prints the env to point workers at it)."""
    from worker.emulator import serve

    serve(
        host=host,
        port=port,
        latency_s=latency,
        concurrency_limit=concurrency,
        cert_dir=cert_dir,
        round_trip_s=round_trip,
    )


@cli.command()
def moderate(prompt: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The verdict IMAGEGEN_MODERATION's chain gives PROMPT (nothing is enqueued)."""
    from worker.moderation import PASS
    from worker.moderation_setup import moderation_chain

    with _errors():
        chain = moderation_chain(_settings())
        verdict = chain.check(prompt) if chain is not None else PASS
        if chain is not None:
            chain.close()
    data = verdict.as_dict()
    if as_json:
        out.print_json(json.dumps(data))
    elif verdict.refused:
        soft = " (soft block)" if verdict.soft else ""
        out.print(
            f"[yellow]refuse[/yellow] {verdict.category}{soft} by {verdict.source}: "
            f"{verdict.message}",
            highlight=False,
        )
    else:
        skipped = (
            f" (skipped, unavailable: {', '.join(verdict.skipped)})" if verdict.skipped else ""
        )
        out.print(f"[green]pass[/green] ({verdict.source}){skipped}", highlight=False)


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (needs IMAGEGEN_API_KEY; OpenAPI at /docs)."""
    import uvicorn

    from worker.logs import configure
    from worker.web import create_app

    with _errors():
        create_app()  # fail here, with one line, when the configuration is incomplete
        configure(_settings().log_format)
        uvicorn.run(
            "worker.web:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            access_log=False,
        )


@cli.command()
def demo(
    emulator: Annotated[
        bool | None,
        typer.Option(
            "--emulator/--real-fal",
            help="The bundled emulator, or fal.ai (billed); default: fal.ai if FAL_KEY is set",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before spending")] = False,
) -> None:
    """Run a batch of ~20 prompts end to end and print the outcome table."""
    import os

    from worker.demo import run_demo

    real_fal = bool(os.environ.get("FAL_KEY")) if emulator is None else not emulator
    with _errors():
        run_demo(real_fal=real_fal, assume_yes=yes, console=out)


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


register(cli)


def main() -> None:
    cli(prog_name="imagegen")


if __name__ == "__main__":  # pragma: no cover
    main()
