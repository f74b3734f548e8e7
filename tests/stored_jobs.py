"""Stored jobs for the retention and image tests: rows with their objects in a real storage.

Jobs are rows written straight into the table (``tests.conftest.add_jobs``) in the state a
test needs; their outputs and edit inputs are objects put in the storage given.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from imagegen.models import JobStatus, utcnow
from imagegen.worker.errors import StorageFailed
from imagegen.worker.media.storage import Storage
from tests.conftest import add_jobs


class FlakyDeletes:
    """A real storage whose deletes fail after ``deletes_left`` of them (a crash midway)."""

    def __init__(self, storage: Storage, deletes_left: int) -> None:
        self.storage = storage
        self.deletes_left = deletes_left

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def delete(self, key: str) -> None:
        if self.deletes_left == 0:
            raise StorageFailed("storage went away")
        self.deletes_left -= 1
        self.storage.delete(key)


def put(storage: Storage, key: str, data: bytes) -> None:
    with tempfile.NamedTemporaryFile() as source:
        source.write(data)
        source.flush()
        storage.put_file(key, Path(source.name), "image/png")


def read(storage: Storage, key: str) -> bytes:
    with storage.open(key) as source:
        return source.read()


def listing(storage: Any) -> dict[str, bytes]:
    """Every object of a local storage, by key."""
    root: Path = storage.root
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def stored_job(
    database_url: str,
    storage: Storage,
    status: JobStatus = JobStatus.SUCCEEDED,
    *,
    age: timedelta = timedelta(0),
    outputs: int = 2,
    inputs: int = 0,
    **values: Any,
) -> uuid.UUID:
    """A job row whose outputs (and edit inputs) are objects in ``storage``."""
    job_id = uuid.uuid4()
    images, recorded = [], []
    for n in range(outputs):
        key, data = f"jobs/{job_id}/{n}.png", f"png {job_id} {n}".encode()
        put(storage, key, data)
        images.append(_record(key, data, url=f"https://fal.example/{job_id}/{n}.png"))
    for n in range(inputs):
        key, data = f"inputs/{job_id}/{n}.png", f"input {job_id} {n}".encode()
        put(storage, key, data)
        recorded.append(_record(key, data, role="image", source_url=None))
    created = utcnow() - age
    insert_job(
        database_url,
        job_id,
        status,
        images=images or None,
        inputs=recorded or None,
        images_stored=bool(images) or None,
        created_at=created,
        prompt="a private prompt",
        **values,
    )
    return job_id


def insert_job(database_url: str, job_id: uuid.UUID, status: JobStatus, **values: Any) -> None:
    add_jobs(database_url, 1, status, id=job_id, **values)  # its own id is overridden


def _record(key: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "storage_key": key,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "content_type": "image/png",
        "width": 16,
        "height": 16,
        **extra,
    }


def row(database_url: str, job_id: uuid.UUID) -> dict[str, Any]:
    from imagegen.worker.db import session_scope
    from imagegen.worker.jobs.queries import get_job, job_to_dict

    with session_scope(database_url) as session:
        return job_to_dict(get_job(session=session, job_id=job_id))


def keys_of(job: dict[str, Any]) -> list[str]:
    return [i["storage_key"] for i in [*job["images"], *job["inputs"]] if i.get("storage_key")]


def imagegen(runner: CliRunner, *args: str) -> Any:
    from imagegen.worker.cli import cli

    return runner.invoke(cli, list(args), catch_exceptions=False)
