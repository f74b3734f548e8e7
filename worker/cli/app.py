"""The Typer app every command module registers on, its consoles, and shared helpers."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console

cli = typer.Typer(
    help="Enqueue, inspect and operate imagegen jobs. Rich for people, --json for programs.",
    epilog="Exit codes: 0 done, 1 other error, 2 usage or invalid input, 3 not found, "
    "4 conflict (e.g. cancelling an ended job), 69 Postgres or Redis unavailable or not migrated.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # usage errors as click's plain lines, not a box
    pretty_exceptions_show_locals=False,  # locals can hold keys and prompts
)
db_cli = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
account_cli = typer.Typer(help="The fal account switch.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(account_cli, name="account")
out = Console()
err = Console(stderr=True, soft_wrap=True)


@dataclass
class State:
    """Global options, set by the root callback before any command runs."""

    debug: bool = False


state = State()


def _version(value: bool) -> None:
    if value:
        from imagegen.worker.cli.config_view import imagegen_version

        typer.echo(f"imagegen {imagegen_version()}")
        raise typer.Exit()


@cli.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error, not one line")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    state.debug = debug
    from imagegen.worker.logs import configure

    # a command's own output is stdout; the library's log lines (a cancel's job.cancelled)
    # go to stderr, warnings and up (the serving commands configure their own level)
    configure(level=logging.WARNING)


def app_settings() -> Any:
    from imagegen.worker.settings import get_settings

    return get_settings()


def db_session() -> Any:
    """A session on DATABASE_URL, after checking the database answers and is migrated
    (``ServiceUnavailable`` otherwise; a missing SQLite file is never created)."""
    from imagegen.worker.db import check_database, session_scope

    url = app_settings().database_url
    check_database(url)
    return session_scope(url)


def plain() -> bool:
    """Tab-separated lines instead of Rich tables: stdout is a pipe or a file."""
    return not sys.stdout.isatty()
