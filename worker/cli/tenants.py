"""``imagegen tenant``: tenants and their API keys (the operator's commands).

``tenant key create NAME`` prints the new key alone on stdout: it is shown this once and
stored only as its hash. Listings never show a key, only its id and first characters.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import typer

from imagegen.worker.cli.app import app_settings, cli
from imagegen.worker.cli.errors import errors
from imagegen.worker.cli.inputs import strict_utf8
from imagegen.worker.errors import JobRequestError

tenant_cli = typer.Typer(help="Tenants and their API keys.", no_args_is_help=True)
key_cli = typer.Typer(help="A tenant's API keys.", no_args_is_help=True)
cli.add_typer(tenant_cli, name="tenant")
tenant_cli.add_typer(key_cli, name="key")
cooldown_cli = typer.Typer(help="Repeat-offender cool-downs.", no_args_is_help=True)
cli.add_typer(cooldown_cli, name="cooldown")


def _database_url() -> str:
    """DATABASE_URL, after checking it answers and is migrated (ServiceUnavailable if not)."""
    from imagegen.worker.db import check_database

    url: str = app_settings().database_url
    check_database(url)
    return url


def _lines(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """Tab-separated lines under a header: for people and for ``cut`` alike."""
    typer.echo("\t".join(columns))
    for row in rows:
        typer.echo("\t".join("-" if row[c] is None else str(row[c]) for c in columns))


@tenant_cli.command("create")
def create(
    name: Annotated[str, typer.Argument(help="1-64 of a-z 0-9 _ -, from a letter or digit")],
    weight: Annotated[float, typer.Option(help="Its share of fal's slots, relative")] = 1.0,
) -> None:
    """Create a tenant; prints its id."""
    from imagegen.worker.tenants.keys import create_tenant

    with errors():
        strict_utf8(name, "NAME")
        tenant = create_tenant(_database_url(), name, weight=weight)
    typer.echo(str(tenant.id))


@tenant_cli.command("quota")
def quota(
    name: Annotated[str, typer.Argument(help="The tenant's name")],
    max_in_flight: Annotated[int | None, typer.Option(help="Open jobs at most")] = None,
    max_jobs_per_day: Annotated[int | None, typer.Option(help="Jobs a UTC day")] = None,
    max_spend_per_day: Annotated[str | None, typer.Option(help="USD a UTC day")] = None,
    max_spend_per_month: Annotated[str | None, typer.Option(help="USD a UTC month")] = None,
    clear: Annotated[list[str] | None, typer.Option(help="A quota to remove (repeat)")] = None,
) -> None:
    """Set a tenant's quotas (checked at enqueue: over one, the enqueue is refused); prints
    its quotas as JSON."""
    from decimal import Decimal, InvalidOperation

    from imagegen.worker.tenants.quotas import set_quotas

    given = {
        "max_in_flight": max_in_flight,
        "max_jobs_per_day": max_jobs_per_day,
        "max_spend_per_day_usd": max_spend_per_day,
        "max_spend_per_month_usd": max_spend_per_month,
    }
    with errors():
        changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        for key in ("max_spend_per_day_usd", "max_spend_per_month_usd"):
            if key in changes:
                try:
                    changes[key] = Decimal(changes[key])
                except InvalidOperation:
                    raise JobRequestError(f"{key} must be a number of USD") from None
        changes.update({q: None for q in clear or []})
        if not changes:
            raise JobRequestError("nothing to set: give a --max-... option or --clear QUOTA")
        shown = set_quotas(_database_url(), name, changes)
    typer.echo(json.dumps(shown, default=str, indent=2))


@tenant_cli.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every tenant, by name."""
    from imagegen.worker.tenants.keys import list_tenants

    with errors():
        rows = [tenant.to_json() for tenant in list_tenants(_database_url())]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _lines(rows, ("name", "id", "weight", "created_at"))


@key_cli.command("create")
def key_create(name: Annotated[str, typer.Argument(help="The tenant's name")]) -> None:
    """Create an API key for tenant NAME; prints the key alone (shown this once)."""
    from imagegen.worker.tenants.keys import create_key

    with errors():
        strict_utf8(name, "NAME")
        new = create_key(_database_url(), name)
    typer.echo(new.key)


@key_cli.command("list")
def key_list(
    name: Annotated[str, typer.Argument(help="The tenant's name")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Tenant NAME's keys: id, prefix, created, last used, revoked (never the key)."""
    from imagegen.worker.tenants.keys import list_keys

    with errors():
        strict_utf8(name, "NAME")
        rows = [key.to_json() for key in list_keys(_database_url(), name)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _lines(rows, ("id", "prefix", "created_at", "last_used_at", "revoked_at"))


@key_cli.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key list)")]) -> None:
    """Revoke a key at once: requests with it get 401 from now on."""
    from imagegen.worker.tenants.keys import revoke_key

    with errors():
        strict_utf8(key_id, "KEY_ID")
        try:
            parsed = uuid.UUID(key_id)
        except ValueError:
            message = f"not a key id: {key_id[:60]!r} (imagegen tenant key list shows them)"
            raise JobRequestError(message) from None
        key = revoke_key(_database_url(), parsed)
    typer.echo(f"revoked key {key.id} ({key.prefix}...) of tenant {key.tenant}")


@cooldown_cli.command("list")
def cooldown_list() -> None:
    """The active cool-downs as JSON: tenant, end user, refusals, since, until."""
    from imagegen.worker.tenants.cooldown import list_active

    with errors():
        rows = list_active(_database_url())
    typer.echo(json.dumps(rows, indent=2))


@cooldown_cli.command("lift")
def cooldown_lift(
    tenant: Annotated[str, typer.Argument(help="The tenant's name")],
    end_user: Annotated[
        str | None, typer.Option(help="The end user (else the tenant's own)")
    ] = None,
) -> None:
    """End a cool-down now; prints how many were lifted."""
    from imagegen.worker.tenants.cooldown import lift

    with errors():
        lifted = lift(_database_url(), tenant, end_user)
    typer.echo(str(lifted))
