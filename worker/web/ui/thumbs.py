"""GET /ui/jobs/{id}/thumb/{n} (a small WebP made with Pillow) and /image/{n} (the image).

Both are tenant-scoped like the pages. A stored image never changes (its key names the job
and index), so thumbnails are cached in this process by storage key, and the browser may
keep them an hour (``private``: never a shared cache).
"""

from __future__ import annotations

import io
import threading
import uuid
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import Response

from imagegen.worker.db import session_scope
from imagegen.worker.errors import JobNotFound, StorageFailed
from imagegen.worker.jobs import queries

from ..images import app_storage, read_image
from .guard import PageError, Viewer, settings_of, ui_caller

router = APIRouter(prefix="/ui", include_in_schema=False)
THUMB_PX = 192
#: the most bytes of an image read to make a thumbnail (fal's largest PNGs are ~30 MB)
MAX_SOURCE_BYTES = 64 * 1024 * 1024
_CACHE_ITEMS = 512
_cache: OrderedDict[str, bytes] = OrderedDict()
_lock = threading.Lock()


def _stored_key(request: Request, viewer: Viewer, job_id: uuid.UUID, n: int) -> str:
    with session_scope(settings_of(request).database_url) as db:
        try:
            job = queries.get_job(session=db, job_id=job_id, tenant_id=viewer.caller.tenant_id)
        except JobNotFound:
            raise PageError(404, "no such job") from None
        images = list(job.images or [])
        if job.images_purged_at is not None or n >= len(images):
            raise PageError(404, f"job {job_id} has no stored image {n}")
        key = images[n].get("storage_key")
    if not key:
        raise PageError(404, f"image {n} of job {job_id} is not stored")
    return str(key)


def thumbnail(data: bytes) -> bytes:
    """A WebP at most THUMB_PX on its longer side; ValueError if Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale
            small = image.convert("RGB")
            small.thumbnail((THUMB_PX, THUMB_PX))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not an image Pillow can read: {exc}") from None
    out = io.BytesIO()
    small.save(out, "WEBP", quality=75)
    return out.getvalue()


def _cached(key: str) -> bytes | None:
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
        return found


def _keep(key: str, data: bytes) -> None:
    with _lock:
        _cache[key] = data
        while len(_cache) > _CACHE_ITEMS:
            _cache.popitem(last=False)


@router.get("/jobs/{job_id}/thumb/{n}")
def thumb(
    job_id: uuid.UUID,
    n: Annotated[int, Path(ge=0, le=64)],
    request: Request,
    viewer: Annotated[Viewer, Depends(ui_caller)],
) -> Response:
    key = _stored_key(request, viewer, job_id, n)
    small = _cached(key)
    if small is None:
        try:
            with app_storage(request).open(key) as source:
                data = source.read(MAX_SOURCE_BYTES + 1)
        except StorageFailed as exc:
            why = "the image storage: " + exc.message
            raise PageError(503 if exc.retryable else 404, why) from None
        try:
            small = thumbnail(data[:MAX_SOURCE_BYTES])
        except ValueError as exc:
            raise PageError(404, str(exc)) from None
        _keep(key, small)
    headers = {"Cache-Control": "private, max-age=3600"}
    return Response(small, media_type="image/webp", headers=headers)


@router.get("/jobs/{job_id}/image/{n}")
def image(
    job_id: uuid.UUID,
    n: Annotated[int, Path(ge=0, le=64)],
    request: Request,
    viewer: Annotated[Viewer, Depends(ui_caller)],
) -> Response:
    """The API's image route (streamed, or S3's presigned redirect), with the page's auth
    (``ui_caller`` put the caller where the API's tenant scoping reads it)."""
    try:
        return read_image(job_id, n, request)
    except JobNotFound:
        raise PageError(404, "no such job") from None
    except HTTPException as exc:
        raise PageError(exc.status_code, str(exc.detail)) from None
