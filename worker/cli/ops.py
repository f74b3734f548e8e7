"""Operator commands: sweep, db upgrade/downgrade, account unlock, moderate."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from imagegen.worker.cli.app import account_cli, app_settings, cli, db_cli, err, out
from imagegen.worker.cli.errors import errors
from imagegen.worker.cli.inputs import read_prompt
from imagegen.worker.cli.views import printable


@cli.command()
def sweep() -> None:
    """Re-publish jobs whose broker message was lost; fail jobs past their deadline."""
    from imagegen.worker.celery_app import app
    from imagegen.worker.db import check_database
    from imagegen.worker.jobs.sweeper import sweep as sweep_jobs

    with errors():
        settings = app_settings()
        check_database(settings.database_url)
        report = sweep_jobs(settings, app)
    err.print(f"republished {len(report.republished)}, failed past deadline {len(report.expired)}")


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the job table to the latest schema."""
    from imagegen.worker.db import upgrade

    with errors():
        upgrade(app_settings().database_url, revision)
    err.print(f"database at {revision}")


@db_cli.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Migrate down to REVISION (``base`` drops every table)."""
    from imagegen.worker.db import downgrade

    with errors():
        downgrade(app_settings().database_url, revision)
    err.print(f"database at {revision}")


@account_cli.command("unlock")
def account_unlock() -> None:
    """Clear the account-locked switch after fixing the fal account."""
    from imagegen.worker.fal.account import AccountGuard

    settings = app_settings()
    AccountGuard.for_url(settings.redis_url, settings.account_lock_ttl_s).unlock()
    err.print("fal account switch cleared: workers submit again")


@cli.command()
def moderate(
    prompt: Annotated[str, typer.Argument(help="The prompt; - reads it from stdin")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The verdict IMAGEGEN_MODERATION's chain gives PROMPT (nothing is enqueued)."""
    from imagegen.worker.moderation import PASS
    from imagegen.worker.moderation.setup import moderation_chain

    with errors():
        text = read_prompt(prompt, None)
        chain = moderation_chain(app_settings())
        verdict = chain.check(text) if chain is not None else PASS
        if chain is not None:
            chain.close()
    data = verdict.as_dict()
    if as_json:
        typer.echo(json.dumps(data))
    elif verdict.refused:
        soft = " (soft block)" if verdict.soft else ""
        line = f" {verdict.category}{soft} by {verdict.source}: {verdict.message}"
        out.print(Text.assemble(("refuse", "yellow"), printable(line)), highlight=False)
    else:
        skipped = (
            f" (skipped, unavailable: {', '.join(verdict.skipped)})" if verdict.skipped else ""
        )
        line = f" ({verdict.source}){skipped}"
        out.print(Text.assemble(("pass", "green"), printable(line)), highlight=False)
