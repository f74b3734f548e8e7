"""Commands about jobs: enqueue, job, jobs, stats, cancel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from imagegen.models import TERMINAL_STATUSES, JobStatus
from imagegen.worker.cli.app import app_settings, cli, db_session, out, plain
from imagegen.worker.cli.errors import errors
from imagegen.worker.cli.inputs import job_uuid, parse_since, read_prompt, strict_utf8
from imagegen.worker.errors import JobConflict


@cli.command()
def enqueue(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt; - reads it from stdin", show_default=False)
    ] = None,
    prompt_file: Annotated[
        Path | None, typer.Option(help="Read the prompt from this file (UTF-8)")
    ] = None,
    size: Annotated[str | None, typer.Option(help="Preset name or WIDTHxHEIGHT")] = None,
    quality: Annotated[str | None, typer.Option(help="auto, low, medium or high")] = None,
    num_images: Annotated[int | None, typer.Option(help="1 to 4")] = None,
    output_format: Annotated[str | None, typer.Option(help="jpeg, png or webp")] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    tenant: Annotated[str | None, typer.Option(help="Its tenant (default: default)")] = None,
    end_user: Annotated[str | None, typer.Option(help="Your id of its user")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the outcome (exit code: see docs)")] = False,
    wait_timeout: Annotated[float | None, typer.Option(min=0, help="Seconds to wait")] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(help="An input image (path or URL; repeat): an edit job", show_default=False),
    ] = None,
    mask: Annotated[str | None, typer.Option(help="Edit mask (path or URL)")] = None,
    consent: Annotated[
        str | None, typer.Option(help="Consent reference image of the person shown")
    ] = None,
) -> None:
    """Queue a generation (with --image: an edit); prints the job id alone (--wait: then
    follows it on stderr)."""
    from imagegen.worker.db import check_database
    from imagegen.worker.jobs.enqueue import enqueue as enqueue_job

    with errors():
        text = read_prompt(prompt, prompt_file)
        named = {"--size": size, "--idempotency-key": idempotency_key, "--tenant": tenant}
        for what, value in {**named, "--end-user": end_user}.items():
            if value is not None:
                strict_utf8(value, what)
        settings = app_settings()
        check_database(settings.database_url)  # a missing SQLite file is named, not created
        job_id = enqueue_job(
            text,
            size=size,
            quality=quality,
            num_images=num_images,
            output_format=output_format,
            idempotency_key=idempotency_key,
            tenant=tenant,
            end_user=end_user,
            images=[_input(i) for i in image or []],
            mask=_input(mask),
            consent=_input(consent),
            settings=settings,
        )
    typer.echo(str(job_id))
    if wait:
        from imagegen.worker.cli.comforts import wait_and_report

        raise typer.Exit(wait_and_report(job_id, wait_timeout))


def cli_link() -> Any:
    from imagegen.worker.media.links import settings_link

    return settings_link(app_settings(), files=True)


def _input(value: str | None) -> Any:
    """A URL stays a URL; anything else is a local file's path."""
    if value is None or value.startswith(("http://", "https://")):
        return value
    return Path(value)


@cli.command()
def job(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One job, with every submission to fal."""
    from imagegen.worker.cli.views import show_job
    from imagegen.worker.jobs.queries import get_job, job_to_dict

    with errors():
        uid = job_uuid(job_id)
        with db_session() as session:
            data = job_to_dict(
                get_job(session=session, job_id=uid), with_attempts=True, link=cli_link()
            )
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    show_job(out, data, plain=plain())


@cli.command()
def jobs(
    status: Annotated[JobStatus | None, typer.Option(case_sensitive=False)] = None,
    category: Annotated[str | None, typer.Option(help="Refusal category")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, or 30m / 2h / 7d ago")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's jobs")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent jobs, newest first, filtered by status, refusal category, age and tenant."""
    from imagegen.worker.cli.views import show_jobs
    from imagegen.worker.jobs.queries import job_to_dict, list_jobs
    from imagegen.worker.tenants.keys import find_tenant

    with errors():
        since_at = parse_since(since) if since else None
        if category is not None:
            strict_utf8(category, "--category")
        with db_session() as session:
            scope = find_tenant(session, strict_utf8(tenant, "--tenant")).id if tenant else None
            found = list_jobs(
                session=session,
                status=status,
                category=category,
                since=since_at,
                limit=limit,
                tenant_id=scope,
            )
            rows = [job_to_dict(j, link=cli_link()) for j in found]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    show_jobs(out, rows, plain=plain())


@cli.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    by: Annotated[str | None, typer.Option(help="tenant: jobs, refusals, spend per tenant")] = None,
    since: Annotated[
        str | None, typer.Option(help="With --by: jobs created since (24h, ISO)")
    ] = None,
) -> None:
    """Counts by status and by refusal category (--by tenant: per tenant, with spend)."""
    from imagegen.worker.cli.views import show_stats
    from imagegen.worker.jobs.queries import stats as job_stats

    if by is not None:
        _tenant_stats(by, since)
        return
    with errors(), db_session() as session:
        data = job_stats(session=session)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    show_stats(out, data, plain=plain())


def _tenant_stats(by: str, since: str | None) -> None:
    from imagegen.worker.errors import JobRequestError
    from imagegen.worker.jobs.tenant_stats import tenant_stats

    with errors():
        if by != "tenant":
            raise JobRequestError(f"--by takes 'tenant', not {by!r}")
        cut = parse_since(since) if since else None
        with db_session() as session:
            rows = tenant_stats(session, since=cut)
    typer.echo(json.dumps(rows, indent=2))


@cli.command()
def cancel(job_id: str) -> None:
    """Cancel a job (a queued one never reaches fal; a running one is cancelled at fal).

    Exits 4 when the job had already ended (nothing was cancelled), 3 when there is no such job.
    """
    from imagegen.worker.jobs.cancel import cancel as cancel_job
    from imagegen.worker.jobs.queries import get_job

    with errors():
        uid = job_uuid(job_id)
        with db_session() as session:
            before = get_job(session=session, job_id=uid).status
        if before in TERMINAL_STATUSES:
            raise JobConflict(f"job {uid} already {before.value}, not cancelled")
        after = cancel_job(uid, settings=app_settings())
        if after != JobStatus.CANCELLED.value:
            raise JobConflict(f"job {uid} {after} meanwhile, not cancelled")
    typer.echo(after)
