"""The store stage (worker/jobs/store.py), run as its Celery task runs it, on a job the collect
stage moved to ``storing``: fal's image URLs are served by a real local HTTP server, the
images go to a real local storage directory."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagegen.models import JobStatus
from imagegen.worker.constants import STORE_TASK
from imagegen.worker.db import write
from imagegen.worker.fal.fake import FakeFal
from imagegen.worker.jobs import collect, state, store
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.media.fetch import new_client
from imagegen.worker.media.storage import open_storage
from tests.stages.kit import RecordingApp, add_job, job, make_deps, to_collecting

PNG = io.BytesIO()
Image.new("RGB", (40, 30), (1, 2, 3)).save(PNG, "PNG")
PNG_BYTES = PNG.getvalue()
HITS: dict[str, int] = {}


class _Files(BaseHTTPRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        HITS[self.path] = HITS.get(self.path, 0) + 1
        status, body = {"/ok.png": (200, PNG_BYTES), "/busy": (503, b"busy")}.get(
            self.path, (404, b"gone")
        )
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def stored_deps(url: str, fal: FakeFal, app: RecordingApp, tmp_path: Path) -> Deps:
    deps = make_deps(url, fal, app, IMAGEGEN_STORE_ATTEMPTS=3)
    deps.storage = open_storage(f"file:{tmp_path / 'store'}")
    deps.files = new_client()
    deps.fal_files_private = True  # the test's file server is on 127.0.0.1
    return deps


def _storing(deps: Deps, urls: list[str]) -> uuid.UUID:
    """A job fal answered with ``urls``: collected, so storing (as the collect stage ends)."""
    job_id = add_job(deps)
    to_collecting(deps, job_id)
    assert collect.run(job_id, deps).summary == "storing"
    images = [{"url": u, "content_type": "image/png"} for u in urls]
    write(
        deps.settings.database_url,
        lambda db: db.execute(
            state.JOBS.update().where(state.JOBS.c.id == job_id).values(images=images)
        ),
    )
    return job_id


def test_collect_hands_fals_images_to_the_store_task(stored_deps: Deps, app: RecordingApp) -> None:
    job_id = _storing(stored_deps, [])
    assert job(stored_deps, job_id)["status"] is JobStatus.STORING
    assert app.sent[-1] == (STORE_TASK, [str(job_id)], {"task_id": f"{job_id}/store-1"})


def test_images_are_stored_and_recorded(stored_deps: Deps, files: str, tmp_path: Path) -> None:
    job_id = _storing(stored_deps, [f"{files}/ok.png", f"{files}/ok.png"])
    assert store.run(job_id, stored_deps).summary == "succeeded"
    row = job(stored_deps, job_id)
    assert row["status"] is JobStatus.SUCCEEDED and row["images_stored"] is True
    for n, image in enumerate(row["images"]):
        assert image["storage_key"] == f"jobs/{job_id}/{n}.png"
        assert (tmp_path / "store" / image["storage_key"]).read_bytes() == PNG_BYTES
        assert image["sha256"] == hashlib.sha256(PNG_BYTES).hexdigest()
        assert (image["width"], image["height"], image["bytes"]) == (40, 30, len(PNG_BYTES))
        assert image["url"] == f"{files}/ok.png"  # fal's URL kept beside the copy


def test_a_run_again_after_a_crash_writes_the_same_bytes(
    stored_deps: Deps, files: str, tmp_path: Path
) -> None:
    job_id = _storing(stored_deps, [f"{files}/ok.png"])
    first = store._stored(stored_deps, job_id, 0, {"url": f"{files}/ok.png"})  # then "crashed"
    assert store.run(job_id, stored_deps).summary == "succeeded"  # the run again
    again = job(stored_deps, job_id)["images"][0]
    assert again["storage_key"] == first["storage_key"] and again["sha256"] == first["sha256"]
    assert (tmp_path / "store" / first["storage_key"]).read_bytes() == PNG_BYTES
    assert store.run(job_id, stored_deps).summary == "skipped"  # ended: nothing more to do


def test_an_image_that_is_gone_ends_unstored_at_once(stored_deps: Deps, files: str) -> None:
    job_id = _storing(stored_deps, [f"{files}/ok.png", f"{files}/gone"])
    outcome = store.run(job_id, stored_deps)
    assert outcome.summary == store.NOT_STORED
    row = job(stored_deps, job_id)
    assert row["status"] is JobStatus.SUCCEEDED and row["images_stored"] is False
    assert "404" in row["storage_error"] and "after" not in row["storage_error"]
    assert [i["url"] for i in row["images"]] == [f"{files}/ok.png", f"{files}/gone"]


def test_a_busy_file_host_is_retried_then_given_up_never_resubmitted(
    stored_deps: Deps, files: str, fal: FakeFal
) -> None:
    job_id = _storing(stored_deps, [f"{files}/busy"])
    for retries in range(2):
        outcome = store.run(job_id, stored_deps, retries=retries)
        assert outcome.retry_in is not None and "503" in (outcome.reason or ""), outcome
        row = job(stored_deps, job_id)
        assert row["status"] is JobStatus.STORING and row["lease_owner"] is None
    outcome = store.run(job_id, stored_deps, retries=2)
    assert outcome.summary == store.NOT_STORED
    row = job(stored_deps, job_id)
    assert row["images_stored"] is False and "after 3 tries" in row["storage_error"]
    assert len(fal.submits) == 1  # one generation, billed once


def test_a_storing_job_is_not_cancelled_and_does_not_expire(stored_deps: Deps) -> None:
    job_id = _storing(stored_deps, [])
    moved = write(stored_deps.settings.database_url, lambda db: state.move(db, job_id, "cancel"))
    assert moved is None
    assert not state.allowed(JobStatus.STORING, JobStatus.FAILED)
    assert state.allowed(JobStatus.STORING, JobStatus.SUCCEEDED)
