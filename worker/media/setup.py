"""Where the stages and the enqueue API get their image storage and file client."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from imagegen.worker.fal.gateway import targets_production
from imagegen.worker.logs import get_logger
from imagegen.worker.media.fetch import new_client
from imagegen.worker.media.inputs import InputSource, check_sources, remove_inputs, store_inputs
from imagegen.worker.media.storage import Storage, open_storage
from imagegen.worker.settings import Settings

log = get_logger(__name__)
_lock = threading.Lock()


def storage_for(url: str) -> Storage:
    """One Storage per IMAGEGEN_STORAGE_URL and process (clients are thread-safe)."""
    with _lock:
        return _storage(url)


@lru_cache(maxsize=4)
def _storage(url: str) -> Storage:
    return open_storage(url)


def media_deps(settings: Settings) -> dict[str, Any]:
    """``storage``, ``files`` and ``fal_files_private`` for ``Deps`` (no storage: not copied)."""
    if not settings.store_images:
        return {}
    return {
        "storage": storage_for(settings.storage_url),
        # fal's file CDN needs no credentials: none are sent; fetch follows redirects itself
        "files": new_client(),
        # the emulator serves its files from this machine; fal's CDN is public
        "fal_files_private": settings.input_allow_private or not targets_production(),
    }


def split_inputs(
    images: Sequence[str | Path], mask: str | Path | None, consent: str | Path | None
) -> tuple[dict[str, Any], list[InputSource]]:
    """``enqueue``'s inputs: URLs become request fields (checked like the API's), paths
    become uploads."""
    fields: dict[str, Any] = {}
    files: list[InputSource] = []
    named: list[tuple[str, str, str | Path | None]]
    named = [("image", f"image {n}", image) for n, image in enumerate(images)]
    named += [(role, role, value) for role, value in (("mask", mask), ("consent", consent))]
    for role, label, value in named:
        if value is None:
            continue
        text = str(value)
        if isinstance(value, str) and text.startswith(("http://", "https://")):
            if role == "image":
                fields.setdefault("image_urls", []).append(text)
            else:
                fields[f"{role}_url"] = text
        else:
            files.append(InputSource(role, path=Path(value), label=f"{label} ({Path(value).name})"))
    return fields, files


def edit_inputs(
    row: dict[str, Any], sources: list[InputSource], settings: Settings
) -> list[dict[str, Any]]:
    """Check and store the inputs of the job ``row`` will create; make it an edit job."""
    if not sources:
        return []
    check_sources(sources, settings)
    inputs = store_inputs(
        row["id"], sources, settings=settings, storage=storage_for(settings.storage_url)
    )
    row.update(model=settings.edit_model, inputs=inputs)
    return inputs


def discard_inputs(inputs: list[dict[str, Any]], settings: Settings) -> None:
    """The job was not created (or another job has its key): its stored inputs go."""
    if not inputs:
        return
    try:
        remove_inputs(storage_for(settings.storage_url), inputs)
    except Exception as exc:  # left behind: harmless, and purge never sees it
        log.warning("inputs.not_removed", error=str(exc))
