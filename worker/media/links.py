"""The URL a caller gets for a stored image: S3's presigned GET, or the API's image route."""

from __future__ import annotations

import uuid
from typing import Any

from imagegen.worker.jobs.queries import ImageLink
from imagegen.worker.media.local import LocalStorage
from imagegen.worker.media.storage import Storage
from imagegen.worker.settings import Settings


def image_path(job_id: uuid.UUID, index: int) -> str:
    """The API route that streams a stored image (same auth as the job)."""
    return f"/jobs/{job_id}/images/{index}"


def image_link(
    storage: Storage | None, ttl_s: int, api_base: str = "", *, files: bool = False
) -> ImageLink:
    """``api_base``: the API's URL as the caller reached it ('' gives a path, e.g. for a
    callback, which the web app resolves against the API it uses). ``files``: a local
    store's images as file:// URLs (the CLI, on the machine that has them)."""

    def link(job_id: uuid.UUID, index: int, image: dict[str, Any]) -> str | None:
        if storage is None:
            return None
        key = str(image["storage_key"])
        presigned = storage.presigned_url(key, ttl_s)
        if presigned is not None:
            return presigned
        if files and isinstance(storage, LocalStorage):
            return (storage.root / key).resolve().as_uri()
        return api_base.rstrip("/") + image_path(job_id, index)

    return link


def settings_link(settings: Settings, api_base: str = "", *, files: bool = False) -> ImageLink:
    """``image_link`` for the configured storage (opened on first use of a stored image)."""

    def link(job_id: uuid.UUID, index: int, image: dict[str, Any]) -> str | None:
        from imagegen.worker.media.setup import storage_for

        storage = storage_for(settings.storage_url)
        make = image_link(storage, settings.presign_ttl_s, api_base, files=files)
        return make(job_id, index, image)

    return link
