"""The Typer app every command module registers on, its consoles, and shared helpers."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

cli = typer.Typer(
    help="Enqueue, inspect and operate imagegen jobs. Rich for people, --json for programs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold keys and prompts
)
db_cli = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
account_cli = typer.Typer(help="The fal account switch.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(account_cli, name="account")
out = Console()
err = Console(stderr=True, soft_wrap=True)


def app_settings() -> Any:
    from worker.settings import get_settings

    return get_settings()


def db_session() -> Any:
    from worker.db import session_scope

    return session_scope(app_settings().database_url)
