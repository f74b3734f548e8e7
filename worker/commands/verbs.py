"""The Typer commands over ``worker.commands``' modules: parse, call, print, exit."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from worker.errors import ImagegenError, JobNotFound, JobRequestError
from worker.settings import Settings

err = Console(stderr=True, soft_wrap=True, highlight=False)


@contextmanager
def _one_line() -> Iterator[None]:
    """Our errors as one line and a non-zero exit (2: bad input or id; 1: the rest)."""
    try:
        yield
    except (JobRequestError, JobNotFound) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    except ValidationError as exc:  # the environment (Settings) is invalid
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.print(f"configuration error: {problems}", markup=False)
        raise typer.Exit(2) from None
    except ImagegenError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:  # the database went away (imagegen doctor says more)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        err.print(f"error: database unavailable: {reason}", markup=False)
        raise typer.Exit(1) from None


def _settings() -> Settings:
    from worker.settings import get_settings

    return get_settings()


def _version(value: bool) -> None:
    if value:
        from worker.commands.config_view import imagegen_version

        typer.echo(f"imagegen {imagegen_version()}")
        raise typer.Exit()


def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """The ``imagegen`` command: enqueue, inspect and operate."""


def config(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The settings in force (secrets masked) and where each came from: env, .env, default."""
    from worker.commands.config_view import settings_in_force

    with _one_line():
        shown = settings_in_force(_settings())
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    for name, entry in shown.items():
        value = "" if entry["value"] is None else entry["value"]
        typer.echo(f"{name}={value}\t({entry['source']})")


def doctor(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check Postgres, migrations, Redis, a worker, fal and the keys; non-zero if one fails."""
    from worker.commands.doctor import run_checks

    with _one_line():
        checks = run_checks(_settings())
    if as_json:
        typer.echo(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        for check in checks:
            typer.echo(check.line())
    if any(c.ok is False for c in checks):
        raise typer.Exit(1)


def enqueue_bulk(
    file: Annotated[Path, typer.Argument(help="JSON Lines, a POST /jobs body a line; - is stdin")],
) -> None:
    """Queue one job per line of FILE; prints the ids in line order. Bad lines: nothing queued."""
    from worker.commands.bulk import parse_lines

    with _one_line():
        lines = _read_lines(file)
        items, bad = parse_lines(lines)
    if bad:
        for line in bad[:BAD_LINES_SHOWN]:
            err.print(f"line {line.number}: {line.message}", markup=False)
        more = len(bad) - BAD_LINES_SHOWN
        extra = f" (and {more} more)" if more > 0 else ""
        err.print(f"error: {len(bad)} bad line(s){extra}; nothing was queued", markup=False)
        raise typer.Exit(2)
    _enqueue_with_progress(items)


#: bad lines reported one by one; the rest are counted
BAD_LINES_SHOWN = 50


def _read_lines(file: Path) -> list[str]:
    try:
        if str(file) == "-":
            return sys.stdin.read().splitlines()
        return file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise JobRequestError(f"cannot read {file}: {exc}") from None


def _enqueue_with_progress(items: list[dict[str, Any]]) -> None:
    from rich.progress import Progress

    from worker.commands.bulk import enqueue_items

    done = 0
    with _one_line(), Progress(console=err, transient=True) as progress:
        task = progress.add_task("queueing", total=len(items))
        try:
            for ids in enqueue_items(items, settings=_settings()):
                typer.echo("\n".join(map(str, ids)))
                done += len(ids)
                progress.advance(task, len(ids))
        except ImagegenError:
            err.print(f"queued {done} of {len(items)}; lines after those were not", markup=False)
            raise
    err.print(f"queued {done} job(s)", markup=False)


def retry(
    job_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the new job's outcome")] = False,
) -> None:
    """Try a failed job again, as a new job (retry_of links them); prints the new id."""
    from worker.commands.retry import retry as retry_job

    with _one_line():
        new_id = retry_job(_job_uuid(job_id), settings=_settings())
    typer.echo(str(new_id))
    if wait:
        raise typer.Exit(wait_and_report(new_id, None))


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(f"{job_id!r} is not a job id (expected a UUID)") from None


def wait_and_report(job_id: uuid.UUID, timeout_s: float | None) -> int:
    """Follow the job on stderr (a spinner on a terminal, a line per change otherwise);
    print its outcome; return the exit code (``WaitExit``)."""
    from worker.commands.waiting import Progress, outcome_line, progress_text, wait_for_outcome

    last: list[tuple[str, int]] = [("", 0)]
    status = err.status("queued") if err.is_terminal else None

    def show(progress: Progress) -> None:
        if status is not None:
            status.update(progress_text(progress))
        elif (progress.status, progress.attempts) != last[-1]:
            last.append((progress.status, progress.attempts))
            err.print(progress_text(progress), markup=False)

    with _one_line():
        if status is not None:
            status.start()
        try:
            result = wait_for_outcome(job_id, _settings(), show, timeout_s=timeout_s)
        finally:
            if status is not None:
                status.stop()
    err.print(outcome_line(result), markup=False)
    return int(result.exit)


def register(app: typer.Typer) -> None:
    if app.registered_callback is None:  # --version belongs to the app's one callback
        app.callback()(main_options)
    app.command()(config)
    app.command()(doctor)
    app.command("enqueue-bulk")(enqueue_bulk)
    app.command()(retry)
