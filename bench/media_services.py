"""bench.media's services: moto's S3 server in its own process, and image URLs from the emulator.

Both run outside this process, so the CPU and RSS read from /proc/self are the copier's alone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx

from bench.host import Emulator
from bench.proc import free_port, stop_process

#: Fake credentials: moto accepts any, and nothing real must be picked up or sent.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench-not-a-key",
    "AWS_SECRET_ACCESS_KEY": "bench-not-a-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
#: Whatever the machine has configured must not reach (or redirect) the bench.
_CLEARED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL_S3",
)
MODEL = "fal-ai/bench-media"


@dataclass
class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 and a free port; its log in ``log_path``."""

    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> MotoServer:
        self.port = free_port()
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"moto's S3 server did not start:\n{log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.1)

    def point_aws_here(self) -> None:
        """Fake credentials and this endpoint for every boto3 client made after this."""
        for name in _CLEARED:
            os.environ.pop(name, None)
        os.environ.update(FAKE_AWS_ENV)
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint

    def new_bucket(self) -> str:
        bucket = f"imagegen-bench-{uuid.uuid4().hex[:12]}"
        boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
        return bucket

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=5)
            self.proc = None


def image_url(emulator: Emulator, size: int, timeout_s: float = 60) -> str:
    """The URL of an emulator output image of exactly ``size`` bytes (``+bytes:N``)."""
    trust = ssl.create_default_context(cafile=emulator.env["SSL_CERT_FILE"])
    headers = {"authorization": "Key bench-not-a-key"}
    prompt = f"[[fal:ok+bytes:{size}]] bench.media {uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=emulator.base_url, verify=trust, headers=headers) as client:
        submitted = client.post(f"/{MODEL}", json={"prompt": prompt}).raise_for_status().json()
        deadline = time.monotonic() + timeout_s
        while client.get(submitted["status_url"]).json().get("status") != "COMPLETED":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not complete a {size}-byte request")
            time.sleep(0.05)
        result = client.get(submitted["response_url"]).raise_for_status().json()
    image = result["images"][0]
    if int(image.get("file_size", size)) != size:
        raise RuntimeError(f"the emulator made a {image.get('file_size')}-byte image, not {size}")
    return str(image["url"])
