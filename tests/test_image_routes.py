"""GET /jobs/{id}/images/{n}, DELETE /jobs/{id} and `imagegen download`, on real Postgres.

The API runs in-process (Starlette's TestClient) with the test's storage on
``app.state.storage``: the real local backend (streamed), or S3 on moto's server (redirect).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from imagegen.models import JobStatus, utcnow
from imagegen.worker.media.storage import Storage, open_storage
from tests.conftest import API_KEY
from tests.media.conftest import (  # noqa: F401 (the moto fixtures s3_storage_url needs)
    moto_client,
    moto_endpoint,
    s3_bucket,
    s3_storage_url,
)
from tests.stored_jobs import imagegen, insert_job, keys_of, listing, put, read, row, stored_job
from tests.test_retention import cli_env  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    """The real local backend, in this test's directory."""
    return open_storage("file:" + str(tmp_path / "store"))


def client_for(database_url: str, storage: Storage) -> TestClient:
    from imagegen.worker.settings import Settings
    from imagegen.worker.web.app import create_app

    settings = Settings(DATABASE_URL=database_url, IMAGEGEN_API_KEY=API_KEY)  # type: ignore[call-arg]
    app = create_app(settings)
    app.state.storage = storage
    return TestClient(app, headers=AUTH)


@pytest.fixture
def api(database_url: str, storage: Storage) -> Iterator[TestClient]:
    with client_for(database_url, storage) as client:
        yield client


def test_a_stored_image_streams_with_its_type_and_length(
    api: TestClient, database_url: str, storage: Storage
) -> None:
    job_id = stored_job(database_url, storage)
    for n in (0, 1):
        got = api.get(f"/jobs/{job_id}/images/{n}")
        assert got.status_code == 200, got.text
        assert got.content == read(storage, f"jobs/{job_id}/{n}.png")
        assert got.headers["content-type"] == "image/png"
        assert got.headers["content-length"] == str(len(got.content))
        assert got.headers["cache-control"] == "private"


def test_the_404s_say_which(api: TestClient, database_url: str, storage: Storage) -> None:
    job_id = stored_job(database_url, storage)
    queued = stored_job(database_url, storage, JobStatus.QUEUED, outputs=0)
    fal_only = uuid.uuid4()
    insert_job(
        database_url,
        fal_only,
        JobStatus.SUCCEEDED,
        images=[{"url": "https://fal.example/a.png"}],
        images_stored=False,
        storage_error="storage full",
    )
    gone = stored_job(database_url, storage)
    storage.delete(f"jobs/{gone}/1.png")
    cases = {
        f"/jobs/{uuid.uuid4()}/images/0": "no job with id",
        f"/jobs/{job_id}/images/2": "has 2 image(s): no image 2",
        f"/jobs/{queued}/images/0": "has no images (queued)",
        f"/jobs/{fal_only}/images/0": "is not stored: storage full",
        f"/jobs/{gone}/images/1": "missing from storage",
    }
    for path, words in cases.items():
        got = api.get(path)
        assert got.status_code == 404 and words in got.json()["detail"], (path, got.text)
    assert api.delete(f"/jobs/{job_id}").status_code == 200
    purged = api.get(f"/jobs/{job_id}/images/0")
    assert purged.status_code == 404 and "were deleted at" in purged.json()["detail"]


def test_the_routes_need_the_api_key(database_url: str, storage: Storage) -> None:
    job_id = stored_job(database_url, storage)
    with client_for(database_url, storage) as client:
        for method in ("GET", "DELETE"):
            path = f"/jobs/{job_id}/images/0" if method == "GET" else f"/jobs/{job_id}"
            for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
                got = client.request(method, path, headers=headers)
                assert got.status_code == 401, (method, got.text)
    assert row(database_url, job_id)["images_purged_at"] is None
    assert len(listing(storage)) == 2


def test_s3_storage_answers_with_a_redirect_to_the_presigned_url(
    database_url: str,
    s3_storage_url: str,  # noqa: F811
) -> None:
    s3 = open_storage(s3_storage_url)  # S3 on moto's server
    job_id = stored_job(database_url, s3)
    with client_for(database_url, s3) as client:
        got = client.get(f"/jobs/{job_id}/images/1", follow_redirects=False)
    assert got.status_code == 307, got.text
    location = got.headers["location"]
    assert f"/jobs/{job_id}/1.png" in location and "X-Amz-Expires=3600" in location
    fetched = httpx.get(location)  # the presigned URL itself serves the bytes
    assert fetched.status_code == 200 and fetched.content == read(s3, f"jobs/{job_id}/1.png")
    with client_for(database_url, s3) as client:
        assert client.delete(f"/jobs/{job_id}").status_code == 200  # erasure on S3 too
    assert not s3.exists(f"jobs/{job_id}/0.png") and not s3.exists(f"jobs/{job_id}/1.png")


def test_delete_erases_and_answers_the_job(
    api: TestClient, database_url: str, storage: Storage
) -> None:
    job_id = stored_job(database_url, storage, inputs=1)
    other = stored_job(database_url, storage)
    keys = keys_of(row(database_url, job_id))
    erased = api.delete(f"/jobs/{job_id}")
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["id"] == str(job_id) and body["prompt"] == "" and body["status"] == "succeeded"
    assert body["images_purged_at"] and body["prompt_redacted_at"] and "attempt_log" in body
    assert not any(storage.exists(k) for k in keys)
    assert all(storage.exists(k) for k in keys_of(row(database_url, other)))
    assert api.delete(f"/jobs/{job_id}").status_code == 200  # again: the same
    open_job = stored_job(database_url, storage, JobStatus.AT_FAL, outputs=0, inputs=1)
    conflict = api.delete(f"/jobs/{open_job}")
    assert conflict.status_code == 409 and "still at_fal: cancel it first" in conflict.text
    assert all(storage.exists(k) for k in keys_of(row(database_url, open_job)))
    assert api.delete(f"/jobs/{uuid.uuid4()}").status_code == 404


def test_both_routes_are_documented(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    image = paths["/jobs/{job_id}/images/{n}"]["get"]["responses"]
    assert {"200", "307", "401", "404"} <= set(image)
    assert "image/png" in image["200"]["content"]
    erase = paths["/jobs/{job_id}"]["delete"]["responses"]
    assert {"200", "401", "404", "409"} <= set(erase)
    assert erase["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobDetail"
    }


def test_cli_download_writes_each_stored_image(
    cli_env: CliRunner,  # noqa: F811
    database_url: str,
    storage: Storage,
    tmp_path: Path,
) -> None:
    job_id = stored_job(database_url, storage)
    done = imagegen(cli_env, "download", str(job_id), "--to", str(tmp_path / "out"))
    assert done.exit_code == 0, done.output
    paths = [Path(line) for line in done.stdout.splitlines()]
    assert [p.name for p in paths] == [f"{job_id}-0.png", f"{job_id}-1.png"]
    for n, path in enumerate(paths):
        assert path.read_bytes() == read(storage, f"jobs/{job_id}/{n}.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]


def test_cli_download_without_stored_images_is_one_line_and_non_zero(
    cli_env: CliRunner,  # noqa: F811
    database_url: str,
    storage: Storage,
    tmp_path: Path,
) -> None:
    refused = stored_job(database_url, storage, JobStatus.REFUSED, outputs=0)
    erased = stored_job(database_url, storage, images_purged_at=utcnow())
    corrupt = stored_job(database_url, storage)
    put(storage, f"jobs/{corrupt}/1.png", b"not the bytes recorded")
    cases: list[tuple[Any, int, str]] = [
        (refused, 4, "has no images (refused)"),
        (erased, 4, "images were deleted"),
        (uuid.uuid4(), 3, "no job with id"),
        (corrupt, 1, "sha256 differs"),
    ]
    for job_id, code, words in cases:
        done = imagegen(cli_env, "download", str(job_id), "--to", str(tmp_path))
        assert done.exit_code == code, (job_id, done.output)
        assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.part"))


def test_the_real_command_opens_imagegen_storage_url(database_url: str, tmp_path: Path) -> None:
    """`imagegen download` / `purge` as a process: the storage comes from the environment."""
    root = tmp_path / "store"
    job_id = stored_job(database_url, open_storage(f"file:{root}"))
    env = {**os.environ, "DATABASE_URL": database_url, "IMAGEGEN_STORAGE_URL": f"file:{root}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "imagegen.worker.cli", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)

    done = run("download", str(job_id), "--to", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / f"{job_id}-1.png").read_bytes() == (
        root / "jobs" / str(job_id) / "1.png"
    ).read_bytes()
    old = stored_job(database_url, open_storage(f"file:{root}"), age=timedelta(days=3))
    purged = run("purge", "--older-than", "2d", "--json")
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout)["images_deleted"] == 2
    assert not (root / "jobs" / str(old) / "0.png").exists()
    assert (root / "jobs" / str(job_id) / "0.png").exists()
