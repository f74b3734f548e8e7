"""Comfort commands: config, doctor, enqueue-bulk, retry (the work is in their modules)."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from imagegen.worker.cli.app import app_settings, cli, err
from imagegen.worker.cli.errors import EXIT_ERROR, EXIT_USAGE, errors
from imagegen.worker.cli.inputs import job_uuid
from imagegen.worker.errors import ImagegenError, JobRequestError

#: bad lines of an enqueue-bulk file reported one by one; the rest are counted
BAD_LINES_SHOWN = 50


@cli.command()
def config(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The settings in force (secrets masked) and where each came from: env, .env, default."""
    from imagegen.worker.cli.config_view import settings_in_force

    with errors():
        shown = settings_in_force(app_settings())
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    for name, entry in shown.items():
        value = "" if entry["value"] is None else entry["value"]
        typer.echo(f"{name}={value}\t({entry['source']})")


@cli.command()
def doctor(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check Postgres, migrations, Redis, a worker, fal and the keys; non-zero if one fails."""
    from imagegen.worker.cli.doctor import run_checks

    with errors():
        checks = run_checks(app_settings())
    if as_json:
        typer.echo(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        for check in checks:
            typer.echo(check.line())
    if any(c.ok is False for c in checks):
        raise typer.Exit(EXIT_ERROR)


@cli.command("enqueue-bulk")
def enqueue_bulk(
    file: Annotated[Path, typer.Argument(help="JSON Lines, a POST /jobs body a line; - is stdin")],
) -> None:
    """Queue one job per line of FILE; prints the ids in line order. Bad lines: nothing queued."""
    from imagegen.worker.cli.bulk import parse_lines

    with errors():
        items, bad = parse_lines(_read_lines(file))
    if bad:
        for line in bad[:BAD_LINES_SHOWN]:
            err.print(f"line {line.number}: {line.message}", markup=False, highlight=False)
        more = len(bad) - BAD_LINES_SHOWN
        extra = f" (and {more} more)" if more > 0 else ""
        err.print(f"error: {len(bad)} bad line(s){extra}; nothing was queued", markup=False)
        raise typer.Exit(EXIT_USAGE)
    _enqueue_with_progress(items)


def _read_lines(file: Path) -> list[str]:
    try:
        if str(file) == "-":
            return sys.stdin.read().splitlines()
        return file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise JobRequestError(f"cannot read {file}: {exc}") from None


def _enqueue_with_progress(items: list[dict[str, Any]]) -> None:
    from rich.progress import Progress

    from imagegen.worker.cli.bulk import enqueue_items

    done = 0
    with errors(), Progress(console=err, transient=True) as progress:
        task = progress.add_task("queueing", total=len(items))
        try:
            for ids in enqueue_items(items, settings=app_settings()):
                typer.echo("\n".join(map(str, ids)))
                done += len(ids)
                progress.advance(task, len(ids))
        except ImagegenError:
            err.print(f"queued {done} of {len(items)}; lines after those were not", markup=False)
            raise
    err.print(f"queued {done} job(s)", markup=False)


@cli.command()
def retry(
    job_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the new job's outcome")] = False,
) -> None:
    """Try a failed job again, as a new job (retry_of links them); prints the new id."""
    from imagegen.worker.cli.retry import retry as retry_job

    with errors():
        new_id = retry_job(job_uuid(job_id), settings=app_settings())
    typer.echo(str(new_id))
    if wait:
        raise typer.Exit(wait_and_report(new_id, None))


def wait_and_report(job_id: uuid.UUID, timeout_s: float | None) -> int:
    """Follow the job on stderr (a spinner on a terminal, a line per change otherwise);
    print its outcome; return the exit code (``WaitExit``)."""
    from imagegen.worker.cli.waiting import Progress, outcome_line, progress_text, wait_for_outcome

    last: list[tuple[str, int]] = [("", 0)]
    status = err.status("queued") if err.is_terminal else None

    def show(progress: Progress) -> None:
        if status is not None:
            status.update(progress_text(progress))
        elif (progress.status, progress.attempts) != last[-1]:
            last.append((progress.status, progress.attempts))
            err.print(progress_text(progress), markup=False)

    with errors():
        if status is not None:
            status.start()
        try:
            result = wait_for_outcome(job_id, app_settings(), show, timeout_s=timeout_s)
        finally:
            if status is not None:
                status.stop()
    err.print(outcome_line(result), markup=False)
    return int(result.exit)
