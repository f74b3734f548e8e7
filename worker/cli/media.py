"""Commands about stored images: ``purge`` (retention) and ``download`` (a job's images).

``purge`` deletes what ``worker.media.retention.purge`` says: stored images and/or prompts
of ended jobs older than a duration (``--dry-run``: only counts). ``download`` copies a job's
stored images out of the storage (IMAGEGEN_STORAGE_URL) as ``DIR/<job id>-<n>.<ext>``,
streamed and checked against the recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imagegen.worker.cli.app import app_settings, cli, db_session, out
from imagegen.worker.cli.errors import errors
from imagegen.worker.cli.inputs import job_uuid
from imagegen.worker.errors import JobConflict, JobRequestError, MediaError

if TYPE_CHECKING:
    from imagegen.worker.media.storage import Storage

_DURATION = re.compile(r"(\d{1,6})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CHUNK = 256 * 1024


def parse_duration(value: str, option: str) -> timedelta:
    """``30d`` / ``12h`` / ``90m``; anything else is a usage error naming the option."""
    match = _DURATION.fullmatch(value.strip())
    if match is None or int(match[1]) == 0:
        raise JobRequestError(
            f"{option} {value!r}: use a positive age like 30d, 12h or 90m",
            [{"field": option.lstrip("-"), "message": "not a duration"}],
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def open_app_storage() -> Storage:
    """The storage IMAGEGEN_STORAGE_URL names (tests replace this function)."""
    from imagegen.worker.media.storage import open_storage

    return open_storage(app_settings().storage_url)


@cli.command()
def purge(
    older_than: Annotated[
        str | None, typer.Option(help="Delete stored images of jobs older than this (30d)")
    ] = None,
    prompts_older_than: Annotated[
        str | None, typer.Option(help="Empty the prompts of jobs older than this (90d)")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would go; change nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Retention: ended jobs lose their stored images and/or prompts; outcomes stay."""
    from imagegen.worker.media.retention import purge as run_purge

    with errors():
        if older_than is None and prompts_older_than is None:
            raise JobRequestError("give --older-than and/or --prompts-older-than (e.g. 30d)")
        images = parse_duration(older_than, "--older-than") if older_than else None
        prompts = (
            parse_duration(prompts_older_than, "--prompts-older-than")
            if prompts_older_than
            else None
        )
        with db_session():  # checks the database answers and is migrated
            pass
        report = run_purge(
            app_settings().database_url,
            open_app_storage(),
            images_older_than=images,
            prompts_older_than=prompts,
            dry_run=dry_run,
        )
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    out.print(
        f"{verb}: {report.jobs} job(s); {report.images_deleted} image(s), "
        f"{report.bytes_freed} bytes, of {report.image_jobs} job(s); "
        f"{report.prompts_redacted} prompt(s)",
        highlight=False,
    )


@cli.command()
def download(
    job_id: str,
    to: Annotated[Path, typer.Option(help="Directory to write into (created if missing)")] = Path(
        "."
    ),
) -> None:
    """Write a job's stored images as DIR/<job id>-<n>.<ext>; prints each path."""
    from imagegen.worker.jobs.queries import get_job

    with errors():
        uid = job_uuid(job_id)
        with db_session() as session:
            job = get_job(session=session, job_id=uid)
            images, purged = list(job.images or []), job.images_purged_at
            status = job.status.value
        _check_stored(uid, images, purged is not None, status)
        storage = open_app_storage()
        to.mkdir(parents=True, exist_ok=True)
        paths = [_copy(storage, uid, n, image, to) for n, image in enumerate(images)]
    for path in paths:
        typer.echo(str(path))


def _check_stored(
    job_id: uuid.UUID, images: list[dict[str, Any]], purged: bool, status: str
) -> None:
    """A ``JobConflict`` (exit 4) saying why the job has no stored images to copy."""
    if purged:
        raise JobConflict(f"job {job_id}'s images were deleted (retention or erasure)")
    if not images:
        raise JobConflict(f"job {job_id} has no images ({status})")
    if not all(image.get("storage_key") for image in images):
        raise JobConflict(f"job {job_id}'s images are not stored (only fal's URLs)")


def _copy(storage: Storage, job_id: uuid.UUID, n: int, image: dict[str, Any], to: Path) -> Path:
    """Stream one object to a temporary name, check its sha256, then rename it in place."""
    key = str(image["storage_key"])
    suffix = Path(key).suffix.lstrip(".")
    extension = suffix or _EXTENSIONS.get(str(image.get("content_type")), "bin")
    target = to / f"{job_id}-{n}.{extension}"
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with storage.open(key) as source, partial.open("wb") as sink:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                sink.write(chunk)
        expected = image.get("sha256")
        if expected and digest.hexdigest() != expected:
            raise MediaError(f"image {n} of job {job_id}: sha256 differs from the recorded one")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
