"""An edit job's input images: checked and stored at enqueue, handed to fal at submit.

At enqueue every input (a URL, a local file, an upload) is copied to a temporary file under
the byte limit, decoded as an image (type by content, dimensions bounded) and stored under
``jobs/<job id>/input-<n>.<ext>``, before the job row exists: a bad input is refused with
nothing queued and nothing billed. At submit each stored input becomes a URL fal can read
(IMAGEGEN_INPUT_IMAGES_VIA): a presigned S3 URL, fal-client's upload to fal's CDN, or a
data URI (the emulator; small files).
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import httpx

from imagegen.worker.errors import ImageTooLarge, JobRequestError, MediaError, StorageFailed
from imagegen.worker.media.fetch import check_url, fetch
from imagegen.worker.media.inspect import inspect_image
from imagegen.worker.media.storage import Storage
from imagegen.worker.settings import Settings

ROLES = ("image", "mask", "consent")
_CHUNK = 64 * 1024
#: fal-client's upload: (bytes, content type) -> a URL on fal's CDN
Upload = Callable[[bytes, str], str]


@dataclass(frozen=True)
class InputSource:
    """One input as the caller gave it: exactly one of ``url``, ``path``, ``stream``."""

    role: str
    url: str | None = None
    path: Path | None = None
    stream: BinaryIO | None = None
    #: how the caller named it, for messages (a field name, a file name)
    label: str = "the input image"


def check_sources(sources: list[InputSource], settings: Settings) -> None:
    """Counts and URLs, before anything is fetched (JobRequestError naming the problem)."""
    images = [s for s in sources if s.role == "image"]
    if len(images) > settings.input_max_images:
        raise JobRequestError(
            f"{len(images)} input images; at most {settings.input_max_images} "
            "(IMAGEGEN_INPUT_MAX_IMAGES)"
        )
    for role in ("mask", "consent"):
        if sum(s.role == role for s in sources) > 1:
            raise JobRequestError(f"at most one {role} image")
    if any(s.role == "mask" for s in sources) and not images:
        raise JobRequestError("a mask needs an input image to apply to (--image)")
    for source in sources:
        if source.url is not None:
            try:
                check_url(
                    source.url, allow_private=settings.input_allow_private, label=source.label
                )
            except MediaError as exc:
                raise JobRequestError(exc.message, _problem(source, exc.message)) from None


def store_inputs(
    job_id: uuid.UUID,
    sources: Iterable[InputSource],
    *,
    settings: Settings,
    storage: Storage,
    client: httpx.Client | None = None,
) -> list[dict[str, Any]]:
    """Each input checked and stored; raises JobRequestError (a bad input, a URL that
    cannot be fetched) or StorageFailed (ours). Stored objects of a failed call are removed."""
    stored: list[dict[str, Any]] = []
    try:
        for index, source in enumerate(sources):
            stored.append(_store_one(job_id, index, source, settings, storage, client))
    except MediaError as exc:
        remove_inputs(storage, stored)
        if isinstance(exc, StorageFailed):  # ours, not the caller's: a 503, try again
            raise
        raise JobRequestError(exc.message, _problem(source, exc.message)) from None
    return stored


def remove_inputs(storage: Storage, inputs: Iterable[dict[str, Any]]) -> None:
    for record in inputs:
        storage.delete(str(record["storage_key"]))


def _store_one(
    job_id: uuid.UUID,
    index: int,
    source: InputSource,
    settings: Settings,
    storage: Storage,
    client: httpx.Client | None,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(prefix="imagegen-input-") as spool:
        size, sha256 = _copy(source, spool, settings, client)
        spool.flush()
        spool.seek(0)
        info = inspect_image(spool, max_side=settings.input_max_side, label=source.label)
        key = f"jobs/{job_id}/input-{index}.{info.extension}"
        storage.put_file(key, Path(spool.name), info.content_type)
    record: dict[str, Any] = {
        "role": source.role,
        "storage_key": key,
        "sha256": sha256,
        "bytes": size,
        "content_type": info.content_type,
        "width": info.width,
        "height": info.height,
    }
    if source.url is not None:
        record["source_url"] = source.url
    return record


def _copy(
    source: InputSource, spool: IO[bytes], settings: Settings, client: httpx.Client | None
) -> tuple[int, str]:
    limit = settings.input_max_bytes
    if source.url is not None:
        fetched = fetch(
            source.url,
            spool,
            max_bytes=limit,
            timeout_s=settings.download_timeout_s,
            allow_private=settings.input_allow_private,
            client=client,
            label=source.label,
        )
        return fetched.bytes, fetched.sha256
    if source.path is not None:
        try:
            with source.path.open("rb") as file:
                return _limited_copy(file, spool, limit, source.label)
        except OSError as exc:
            raise MediaError(f"cannot read {source.label}: {exc.strerror or exc}") from None
    if source.stream is None:
        raise ValueError("an InputSource needs a url, a path or a stream")
    return _limited_copy(source.stream, spool, limit, source.label)


def _limited_copy(file: IO[bytes], spool: IO[bytes], limit: int, label: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ImageTooLarge(f"{label} is over {limit:,} bytes (IMAGEGEN_INPUT_MAX_BYTES)")
        digest.update(chunk)
        spool.write(chunk)
    if size == 0:
        raise MediaError(f"{label} is empty")
    return size, digest.hexdigest()


def _problem(source: InputSource, message: str) -> list[dict[str, str]]:
    return [{"field": source.label, "message": message}]


def fal_inputs(
    inputs: list[dict[str, Any]],
    *,
    settings: Settings,
    storage: Storage,
    upload: Upload | None,
) -> dict[str, Any]:
    """``image_urls`` (the images, then the consent reference) and ``mask_url`` for fal."""
    ordered = [i for i in inputs if i["role"] == "image"]
    ordered += [i for i in inputs if i["role"] == "consent"]
    arguments: dict[str, Any] = {
        "image_urls": [_url_for(i, settings, storage, upload) for i in ordered]
    }
    for mask in (i for i in inputs if i["role"] == "mask"):
        arguments["mask_url"] = _url_for(mask, settings, storage, upload)
    return arguments


def _url_for(
    record: dict[str, Any], settings: Settings, storage: Storage, upload: Upload | None
) -> str:
    key, content_type = str(record["storage_key"]), str(record["content_type"])
    via = settings.input_images_via
    if via == "auto":
        via = "presigned" if storage.scheme == "s3" else "fal_upload"
    if via == "presigned":
        # fal fetches it when the request starts: valid past the longest wait at fal
        url = storage.presigned_url(key, settings.presign_ttl_s)
        if url is None:
            raise MediaError(
                "IMAGEGEN_INPUT_IMAGES_VIA=presigned needs S3 storage (IMAGEGEN_STORAGE_URL)"
            )
        return url
    with storage.open(key) as file:
        data = file.read()
    if via == "data_uri":
        return f"data:{content_type};base64,{base64.b64encode(data).decode()}"
    if upload is None:
        raise MediaError("no fal client to upload input images with")
    return upload(data, content_type)
