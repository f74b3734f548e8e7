"""Stored images on S3 end to end: a real worker and API, the emulator, moto's S3 over HTTP."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import API_KEY, Stack, unique

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def test_edit_job_on_s3_inputs_presigned_outputs_presigned(
    stack: Stack, s3_storage_url: str, s3_bucket: str, moto_client: Any, tmp_path: Path
) -> None:
    # fal (here the emulator) reads the input from its presigned URL
    stack.env.update(IMAGEGEN_STORAGE_URL=s3_storage_url, IMAGEGEN_INPUT_IMAGES_VIA="presigned")
    stack.start_worker()
    base = stack.start_api()
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (256, 192), (10, 120, 30)).save(photo, "JPEG")
    prompt = unique("a forest in autumn colours")
    job_id = stack.enqueue(prompt, images=[photo])
    job = stack.wait_terminal(job_id)
    assert job["status"] == "succeeded" and job["images_stored"] is True, job
    [source] = job["inputs"]
    assert (source["content_type"], source["width"], source["height"]) == ("image/jpeg", 256, 192)
    stored_input = moto_client.get_object(Bucket=s3_bucket, Key=f"images/{source['storage_key']}")
    assert stored_input["Body"].read() == photo.read_bytes()

    shown = httpx.get(f"{base}/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"})
    image = shown.json()["images"][0]
    assert image["url"].startswith("http://127.0.0.1:"), image  # moto's, presigned
    assert "X-Amz-Signature=" in image["url"] and image["fal_url"].startswith("https://")
    data = httpx.get(image["url"]).content  # presigned: no credentials needed
    assert hashlib.sha256(data).hexdigest() == image["sha256"]
    key = f"images/{image['storage_key']}"
    assert moto_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data
    assert uuid.UUID(job["id"]) == job_id
