"""A real S3 API over HTTP for the storage tests: moto's server on 127.0.0.1.

One server per session (``moto_endpoint``); ``s3_storage_url`` makes a fresh bucket per test
and points boto3's own chain (AWS_* variables) at the server with fake credentials.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

MB = 1024 * 1024
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-not-a-key",
    "AWS_SECRET_ACCESS_KEY": "testing-not-a-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: Whatever the machine has configured must not reach (or redirect) the tests.
_CLEARED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto server (bound to loopback only, a free port)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def point_aws_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Fake credentials and ``endpoint`` for every boto3 client made after this."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.fixture(scope="session")
def moto_client(moto_endpoint: str) -> Any:
    """A boto3 client of the moto server, for setting up and looking behind the store."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def s3_bucket(moto_endpoint: str, moto_client: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket, with the AWS_* environment pointing at the moto server."""
    point_aws_at(monkeypatch, moto_endpoint)
    bucket = f"imagegen-test-{uuid.uuid4().hex[:12]}"
    moto_client.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_storage_url(s3_bucket: str) -> str:
    """``s3://<fresh bucket>/images`` for ``open_storage`` (the environment is set)."""
    return f"s3://{s3_bucket}/images"


def make_file(tmp_path: Path, size: int, name: str = "src.bin", seed: bytes = b"x") -> Path:
    """A file of ``size`` bytes that are not all alike (so a mix-up shows)."""
    path = tmp_path / name
    block = (seed * 8 + os.urandom(56)) * (MB // 64)
    with path.open("wb") as out:
        left = size
        while left > 0:
            out.write(block[:left])
            left -= len(block)
    return path


def closed_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
