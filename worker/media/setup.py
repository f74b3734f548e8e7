"""The image storage and file client a worker process gets (``worker.jobs.deps.Deps``)."""

from __future__ import annotations

from typing import Any

import httpx

from imagegen.worker.fal.gateway import targets_production
from imagegen.worker.media.storage import open_storage
from imagegen.worker.settings import Settings


def media_deps(settings: Settings) -> dict[str, Any]:
    """``storage``, ``files`` and ``fal_files_private`` for ``Deps`` (no storage: not copied)."""
    if not settings.store_images:
        return {}
    return {
        "storage": open_storage(settings.storage_url),
        # fal's file CDN needs no credentials: none are sent; redirects are followed by fetch
        "files": httpx.Client(timeout=settings.download_timeout_s, follow_redirects=False),
        # the emulator serves its files from this machine; fal's CDN is public
        "fal_files_private": settings.input_allow_private or not targets_production(),
    }
