"""put_file streams: putting a 32 MB file allocates far less than 32 MB (both backends)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from imagegen.worker.media.storage import open_storage

from .conftest import MB, closed_port, make_file, point_aws_at


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _serve_moto_elsewhere() -> Iterator[str]:
    """A moto server in its own process: tracemalloc counts every thread of this one, and
    the in-process server necessarily holds the whole object it receives."""
    port = closed_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):
            assert server.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def remote_s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for endpoint in _serve_moto_elsewhere():
        point_aws_at(monkeypatch, endpoint)
        boto3.session.Session().client("s3").create_bucket(Bucket="memory")
        yield "s3://memory/images"


@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.slow)])
def test_put_file_streams_instead_of_reading_the_file(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("remote_s3_url") if backend == "s3" else f"file:{tmp_path}/s"
    storage = open_storage(url)
    storage.check()  # the client and its service model are loaded before measuring
    src = make_file(tmp_path, 32 * MB)
    tracemalloc.start()
    try:
        storage.put_file("jobs/m/0.png", src, "image/png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MB, f"peak {peak / MB:.1f} MB while putting 32 MB"
    assert storage.size("jobs/m/0.png") == 32 * MB
