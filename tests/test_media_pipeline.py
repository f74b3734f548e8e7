"""Stored images and edit jobs end to end: real Postgres, Redis, Celery worker, poller and
fal-client against the emulator; local storage in a temporary directory."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import Stack, unique

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def _png(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    Image.new("RGB", size, (200, 40, 40)).save(path, "PNG")
    return path


def _storage_env(tmp_path: Path) -> dict[str, str]:
    return {"IMAGEGEN_STORAGE_URL": f"file:{tmp_path / 'store'}"}


def _stored_bytes(tmp_path: Path, key: str) -> bytes:
    return (tmp_path / "store" / key).read_bytes()


def test_output_is_copied_to_storage_and_recorded(stack: Stack, tmp_path: Path) -> None:
    stack.env.update(_storage_env(tmp_path))
    stack.start_worker()
    prompt = unique("a lighthouse at dawn")
    job = stack.wait_terminal(stack.enqueue(prompt, size="1024x768", num_images=2))
    assert job["status"] == "succeeded", job
    assert job["images_stored"] is True and job["storage_error"] is None
    assert len(job["images"]) == 2
    for n, image in enumerate(job["images"]):
        assert image["storage_key"] == f"jobs/{job['id']}/{n}.png"
        data = _stored_bytes(tmp_path, image["storage_key"])
        fal_copy = httpx.get(image["fal_url"], verify=False).content
        assert data == fal_copy and hashlib.sha256(data).hexdigest() == image["sha256"]
        assert (image["width"], image["height"], image["bytes"]) == (1024, 768, len(data))
        assert image["content_type"] == "image/png"
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("broken", ["local-not-a-directory", "s3-unreachable"])
def test_a_copy_that_fails_ends_succeeded_unstored_never_resubmitted(
    stack: Stack, tmp_path: Path, broken: str
) -> None:
    if broken == "local-not-a-directory":  # will not pass: given up at once
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("storage cannot create directories under a file")
        stack.env.update(IMAGEGEN_STORAGE_URL=f"file:{blocker}")
        expected = "Not a directory"
    else:  # may pass: retried, then given up
        stack.env.update(
            IMAGEGEN_STORAGE_URL="s3://bucket/x",
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_MAX_ATTEMPTS="1",
        )
        expected = "after 3 tries"
    stack.env["IMAGEGEN_STORE_ATTEMPTS"] = "3"
    stack.start_worker()
    prompt = unique("a fox in snow")
    job = stack.wait_terminal(stack.enqueue(prompt), timeout_s=60)
    assert job["status"] == "succeeded", job
    assert job["images_stored"] is False
    assert expected in job["storage_error"], job["storage_error"]
    assert job["images"][0]["url"] == job["images"][0]["fal_url"]  # fal's URL kept
    assert job["images"][0]["storage_key"] is None
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1  # billed once
    assert [a["outcome"] for a in job["attempt_log"]] == ["succeeded"]


def test_edit_job_stores_inputs_and_sends_them_to_the_edit_model(
    stack: Stack, tmp_path: Path
) -> None:
    stack.env.update(_storage_env(tmp_path))
    stack.start_worker()
    source = _png(tmp_path / "photo.png", (320, 240))
    mask = _png(tmp_path / "mask.png", (320, 240))
    prompt = unique("make the sky purple")
    job_id = stack.enqueue(prompt, images=[source], mask=mask)
    job = stack.wait_terminal(job_id)
    assert job["status"] == "succeeded", job
    assert job["model"] == "openai/gpt-image-2/edit"
    roles = [(i["role"], i["width"], i["height"]) for i in job["inputs"]]
    assert roles == [("image", 320, 240), ("mask", 320, 240)]
    stored = _stored_bytes(tmp_path, job["inputs"][0]["storage_key"])
    assert stored == source.read_bytes()
    assert job["images_stored"] is True
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"GIF89a" + b"\0" * 64), "not a PNG, JPEG or WebP"),
        (lambda p: p.write_text("just text, named .png"), "not a PNG, JPEG or WebP"),
    ],
)
def test_a_bad_input_file_is_refused_before_anything_is_queued(
    stack: Stack, tmp_path: Path, make: Any, message: str
) -> None:
    from imagegen.worker.errors import JobRequestError

    stack.env.update(_storage_env(tmp_path))
    bad = tmp_path / "input.png"
    make(bad)
    prompt = unique("an edit of nothing")
    with pytest.raises(JobRequestError, match=message):
        stack.enqueue(prompt, images=[bad])
    assert _job_count(stack.database_url) == 0
    assert prompt not in stack.emulator.stats()["submissions_by_prompt"]
    assert not list((tmp_path / "store").rglob("*.*")) if (tmp_path / "store").exists() else True


def _job_count(database_url: str) -> int:
    from sqlalchemy import func, select

    from imagegen.models import Job
    from imagegen.worker.db import session_scope

    with session_scope(database_url) as session:
        return int(session.execute(select(func.count()).select_from(Job)).scalar_one())


def _api_job(base: str, job_id: str) -> dict[str, Any]:
    from tests.conftest import API_KEY

    response = httpx.get(f"{base}/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"})
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def test_api_upload_makes_an_edit_job_and_serves_the_stored_image(
    stack: Stack, tmp_path: Path
) -> None:
    from tests.conftest import API_KEY

    stack.env.update(_storage_env(tmp_path))
    stack.start_worker()
    base = stack.start_api()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (0, 90, 200)).save(buffer, "PNG")
    files = {"image": ("cat.png", buffer.getvalue(), "application/octet-stream")}
    job_part = json.dumps({"prompt": unique("a cat with a hat")})
    created = httpx.post(f"{base}/jobs/uploads", data={"job": job_part}, files=files, headers=auth)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    job = stack.wait_terminal(uuid.UUID(job_id))
    assert job["status"] == "succeeded" and job["images_stored"], job
    shown = _api_job(base, job_id)
    url = shown["images"][0]["url"]
    assert url == f"{base}/jobs/{job_id}/images/0", shown["images"][0]
    assert shown["images"][0]["fal_url"].startswith("https://")
    image = httpx.get(url, headers=auth)
    assert image.status_code == 200, image.text
    assert image.content == _stored_bytes(tmp_path, shown["images"][0]["storage_key"])
    assert httpx.get(url).status_code == 401  # same auth as the job


def test_api_refuses_bad_inputs_with_nothing_queued(stack: Stack, tmp_path: Path) -> None:
    from tests.conftest import API_KEY

    stack.env.update({**_storage_env(tmp_path), "IMAGEGEN_INPUT_MAX_BYTES": "2048"})
    base = stack.start_api()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    prompt = unique("an edit")
    cases = [
        {"prompt": prompt, "image_urls": ["http://127.0.0.1:9/cat.png"]},
        {"prompt": prompt, "image_urls": ["http://169.254.169.254/latest/meta-data"]},
        {"prompt": prompt, "image_urls": ["http://[::1]/x.png"]},
        {"prompt": prompt, "image_urls": ["file:///etc/passwd"]},
        {"prompt": prompt, "image_urls": []},
    ]
    for body in cases:
        answer = httpx.post(f"{base}/jobs", json=body, headers=auth)
        assert answer.status_code == 422, (body, answer.text)
    big = io.BytesIO()
    Image.effect_noise((200, 200), 64).convert("RGB").save(big, "PNG")
    files = {"image": ("big.png", big.getvalue(), "image/png")}
    answer = httpx.post(
        f"{base}/jobs/uploads", data={"job": f'{{"prompt": "{prompt}"}}'}, files=files, headers=auth
    )
    assert answer.status_code == 422 and "IMAGEGEN_INPUT_MAX_BYTES" in answer.text, answer.text
    text = {"image": ("x.png", b"hello, not an image", "image/png")}
    answer = httpx.post(
        f"{base}/jobs/uploads", data={"job": f'{{"prompt": "{prompt}"}}'}, files=text, headers=auth
    )
    assert answer.status_code == 422 and "not a PNG, JPEG or WebP" in answer.text, answer.text
    assert _job_count(stack.database_url) == 0
    assert prompt not in stack.emulator.stats()["submissions_by_prompt"]


class _Inputs(http.server.BaseHTTPRequestHandler):
    """/photo.png: an image; /drip: headers, then a byte every 0.2 s for a minute."""

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (48, 32), (9, 9, 9)).save(buffer, "PNG")
        body = buffer.getvalue() if self.path == "/photo.png" else b"x" * 300
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if self.path == "/photo.png":
                self.wfile.write(body)
                return
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_api_url_inputs_fetched_once_and_a_download_that_never_ends_is_cut(
    stack: Stack, tmp_path: Path
) -> None:
    from tests.conftest import API_KEY

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Inputs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    stack.env.update(
        {
            **_storage_env(tmp_path),
            "IMAGEGEN_INPUT_ALLOW_PRIVATE": "true",  # the test's server is on loopback
            "IMAGEGEN_DOWNLOAD_TIMEOUT_S": "1",
        }
    )
    base = stack.start_api()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    prompt = unique("an edit from a URL")
    started = time.monotonic()
    slow = {"prompt": prompt, "image_urls": [f"{origin}/drip"]}
    answer = httpx.post(f"{base}/jobs", json=slow, headers=auth, timeout=30)
    assert answer.status_code == 422 and "image_urls[0]" in answer.text, answer.text
    assert time.monotonic() - started < 10
    assert _job_count(stack.database_url) == 0
    ok = {"prompt": prompt, "image_urls": [f"{origin}/photo.png"]}
    created = httpx.post(f"{base}/jobs", json=ok, headers=auth, timeout=30)
    assert created.status_code == 201, created.text
    [source] = _api_job(base, created.json()["id"])["inputs"]
    assert (source["source_url"], source["width"], source["height"]) == (
        ok["image_urls"][0],
        48,
        32,
    )
    server.shutdown()
