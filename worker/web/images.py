"""Image routes: a stored image of a job (streamed, or S3's presigned URL), and erasure.

Same API key as the other job routes (the router is included with it in ``app.py``). The
storage is built once per app from IMAGEGEN_STORAGE_URL, on first use, and kept on
``app.state.storage`` (a test may put its own there).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from imagegen.worker.contract import JobDetail
from imagegen.worker.db import session_scope
from imagegen.worker.errors import StorageFailed
from imagegen.worker.jobs import queries
from imagegen.worker.media.retention import erase
from imagegen.worker.settings import Settings

from .auth import tenant_scope
from .errors import RESPONSES
from .schemas import ErrorBody

if TYPE_CHECKING:
    from imagegen.worker.media.storage import Storage

router = APIRouter(tags=["images"], responses=RESPONSES)
CHUNK = 256 * 1024
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
_IMAGE_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image's bytes (local storage)",
        "content": {
            kind: {"schema": {"type": "string", "format": "binary"}} for kind in _IMAGE_TYPES
        },
    },
    307: {"description": "S3 storage: a presigned URL to the image, in Location"},
    404: {
        "model": ErrorBody,
        "description": "No such job, no such image, not stored, or deleted (retention, erasure)",
    },
    503: {"model": ErrorBody, "description": "The database or the storage does not answer"},
}
_ERASE_ANSWERS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job"},
    409: {"model": ErrorBody, "description": "The job has not ended: cancel it first"},
    503: {"model": ErrorBody, "description": "The database or the storage does not answer"},
}


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def app_storage(request: Request) -> Storage:
    """The app's storage, opened on first use (an API that never serves an image needs none)."""
    storage: Storage | None = getattr(request.app.state, "storage", None)
    if storage is None:
        from imagegen.worker.media.setup import storage_for

        storage = request.app.state.storage = storage_for(_settings(request).storage_url)
    return storage


@router.get(
    "/jobs/{job_id}/images/{n}",
    response_class=Response,
    responses=_IMAGE_ANSWERS,
)
def read_image(
    job_id: uuid.UUID,
    n: Annotated[int, Path(ge=0, description="The image's index in the job's images.")],
    request: Request,
) -> Response:
    """Image ``n`` (from 0) of a job as stored: streamed from local storage
    (``Cache-Control: private``), or a 307 to a presigned URL on S3 (valid
    IMAGEGEN_PRESIGN_TTL_S). 404 says which: no job, no such image, not stored, deleted."""
    settings = _settings(request)
    with session_scope(settings.database_url) as session:
        job = queries.get_job(session=session, job_id=job_id, tenant_id=tenant_scope(request))
        images, purged_at = list(job.images or []), job.images_purged_at
        status, storage_error = job.status.value, job.storage_error
    if purged_at is not None:
        raise HTTPException(404, f"job {job_id}'s images were deleted at {purged_at.isoformat()}")
    if n >= len(images):
        have = f"{len(images)} image(s)" if images else f"no images ({status})"
        raise HTTPException(404, f"job {job_id} has {have}: no image {n}")
    key = images[n].get("storage_key")
    if not key:
        why = f": {storage_error}" if storage_error else ""
        raise HTTPException(404, f"image {n} of job {job_id} is not stored{why}")
    storage = app_storage(request)
    try:
        presigned = storage.presigned_url(str(key), settings.presign_ttl_s)
    except StorageFailed as exc:
        raise _storage_problem(exc) or HTTPException(500, exc.message) from None
    if presigned is not None:
        return RedirectResponse(presigned, 307, headers={"Cache-Control": "private, no-store"})
    return _stream(storage, str(key), str(images[n].get("content_type") or ""), job_id, n)


def _stream(storage: Storage, key: str, content_type: str, job_id: uuid.UUID, n: int) -> Response:
    """The object's bytes in chunks; opened before answering, so a missing one is a 404."""
    missing = HTTPException(404, f"image {n} of job {job_id} is missing from storage")
    try:
        size = storage.size(key)
        if size is None:
            raise missing
        opened = storage.open(key)
        source = opened.__enter__()
    except StorageFailed as exc:
        raise _storage_problem(exc) or missing from None
    headers = {"Content-Length": str(size), "Cache-Control": "private"}
    media_type = content_type or "application/octet-stream"
    return StreamingResponse(_chunks(opened, source), media_type=media_type, headers=headers)


def _storage_problem(exc: StorageFailed) -> HTTPException | None:
    """A 503 when the storage may answer later; None for an answer that will not change."""
    if not exc.retryable:
        return None
    return HTTPException(503, f"the image storage does not answer: {exc.message}")


def _chunks(opened: AbstractContextManager[BinaryIO], source: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := source.read(CHUNK):
            yield chunk
    finally:
        opened.__exit__(None, None, None)


@router.delete("/jobs/{job_id}", response_model=JobDetail, responses=_ERASE_ANSWERS)
def erase_job(job_id: uuid.UUID, request: Request) -> dict[str, Any]:
    """Erase a job's data now: its stored images (outputs and edit inputs) are deleted
    and its prompt emptied, whatever its age. Answers 200 with the job as it is after
    (``images_purged_at``, ``prompt_redacted_at`` set; status and refusal kept); again on
    an erased job, the same. 409 for a job that has not ended (cancel it first)."""
    settings = _settings(request)
    with session_scope(settings.database_url) as session:
        # a 404 (no job, or another tenant's) needs no storage
        queries.get_job(session=session, job_id=job_id, tenant_id=tenant_scope(request))
    try:
        erase(settings.database_url, app_storage(request), job_id)
    except StorageFailed as exc:
        raise _storage_problem(exc) or HTTPException(500, exc.message) from None
    with session_scope(settings.database_url) as session:
        job = queries.get_job(session=session, job_id=job_id)
        return queries.job_to_dict(job, with_attempts=True)
