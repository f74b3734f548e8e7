"""The store stage: copy each image fal returned to our storage, then end the job succeeded.

Published by the collect stage after it moved the row collecting → storing (and by the
sweeper when that message was lost). Each image is streamed to a temporary file (bounded
memory, size limit, total timeout), checked with Pillow, and put under
``jobs/<job id>/<n>.<ext>``: a run again after a crash writes the same key with the same
bytes. A failure retries this stage alone with backoff (never a second generation); when
it gives up the job still ends ``succeeded``, with ``images_stored`` false, the reason in
``storage_error`` and fal's URLs kept.
"""

from __future__ import annotations

import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from imagegen.models import JobStatus, utcnow
from imagegen.worker.db import write
from imagegen.worker.errors import MediaError
from imagegen.worker.jobs import state
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.jobs.outcome import CANCELLED, SKIPPED, Outcome
from imagegen.worker.logs import get_logger
from imagegen.worker.media.fetch import fetch
from imagegen.worker.media.inspect import inspect_image

log = get_logger(__name__)
#: fal returns at most 4 images a request; the lease covers each one's full download
MAX_IMAGES = 4
NOT_STORED = "succeeded:images_not_stored"


def output_key(job_id: uuid.UUID, index: int, extension: str) -> str:
    return f"jobs/{job_id}/{index}.{extension}"


def run(job_id: uuid.UUID, deps: Deps, *, retries: int = 0) -> Outcome:
    settings = deps.settings
    owner = uuid.uuid4().hex
    lease_s = settings.lease_s + MAX_IMAGES * settings.download_timeout_s
    moved = write(
        settings.database_url,
        lambda db: state.move(db, job_id, "store", owner=owner, lease_s=lease_s),
    )
    if moved is None:
        status = state.status_of(settings.database_url, job_id)
        return CANCELLED if status is JobStatus.CANCELLED else SKIPPED
    images = _images_of(settings.database_url, job_id)
    try:
        stored = [_stored(deps, job_id, index, image) for index, image in enumerate(images)]
    except MediaError as error:
        return _not_stored(deps, job_id, owner, images, error, retries)
    return _end(deps, job_id, owner, stored, stored=True, summary="succeeded")


def _images_of(database_url: str, job_id: uuid.UUID) -> list[dict[str, Any]]:
    query = select(state.JOBS.c.images).where(state.JOBS.c.id == job_id)
    images = write(database_url, lambda db: db.execute(query).scalar_one_or_none())
    return [dict(image) for image in images or []]


def _stored(deps: Deps, job_id: uuid.UUID, index: int, image: dict[str, Any]) -> dict[str, Any]:
    """The image's record once it is in storage (downloaded, checked, put)."""
    storage = deps.storage
    if storage is None:
        raise MediaError("no image storage is configured (IMAGEGEN_STORAGE_URL)")
    settings = deps.settings
    label = f"image {index} from fal"
    with tempfile.NamedTemporaryFile(prefix="imagegen-") as spool:
        fetched = fetch(
            str(image["url"]),
            spool,
            max_bytes=settings.image_max_bytes,
            timeout_s=settings.download_timeout_s,
            allow_private=deps.fal_files_private,
            client=deps.files,
            label=label,
        )
        spool.flush()
        spool.seek(0)
        info = inspect_image(spool, label=label)
        key = output_key(job_id, index, info.extension)
        storage.put_file(key, Path(spool.name), info.content_type)
    return {
        **image,
        "storage_key": key,
        "sha256": fetched.sha256,
        "bytes": fetched.bytes,
        "content_type": info.content_type,
        "width": info.width,
        "height": info.height,
    }


def _not_stored(
    deps: Deps,
    job_id: uuid.UUID,
    owner: str,
    images: list[dict[str, Any]],
    error: MediaError,
    retries: int,
) -> Outcome:
    tries = retries + 1
    if error.retryable and tries < deps.settings.store_attempts:
        delay = deps.policy.backoff_s(tries)
        log.info("job.store_retry", job_id=str(job_id), error=error.message, attempt=tries)
        until = utcnow() + timedelta(seconds=delay + deps.settings.queued_grace_s)
        moved = write(
            deps.settings.database_url,
            lambda db: state.move(
                db,
                job_id,
                "store_later",
                owner=owner,
                values={"lease_until": until},
            ),
        )
        if moved is None:
            return SKIPPED
        return Outcome("retry", retry_in=delay, reason=f"storing images: {error.message}")
    reason = error.message if not error.retryable else f"{error.message} (after {tries} tries)"
    log.warning("job.images_not_stored", job_id=str(job_id), error=reason)
    return _end(deps, job_id, owner, images, stored=False, summary=NOT_STORED, error=reason)


def _end(
    deps: Deps,
    job_id: uuid.UUID,
    owner: str,
    images: list[dict[str, Any]],
    *,
    stored: bool,
    summary: str,
    error: str | None = None,
) -> Outcome:
    values = {"images": images, "images_stored": stored, "storage_error": error}
    moved = write(
        deps.settings.database_url,
        lambda db: state.move(db, job_id, "succeed", owner=owner, values=values),
    )
    if moved is None:
        return SKIPPED
    fire(moved, deps.app)
    return Outcome(summary)
