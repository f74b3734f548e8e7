"""Both storage backends through one suite: a directory, and S3 over HTTP (moto's server)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import ResponseStreamingError

from imagegen.worker.errors import StorageFailed
from imagegen.worker.media import s3 as s3_module
from imagegen.worker.media.local import LocalStorage
from imagegen.worker.media.s3 import S3Storage
from imagegen.worker.media.storage import Storage, open_storage

from .conftest import MB, closed_port, make_file, point_aws_at


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "s3":
        return open_storage(request.getfixturevalue("s3_storage_url"))
    return open_storage(f"file://{tmp_path}/store")


def test_put_then_open_gives_the_same_bytes(storage: Storage, tmp_path: Path) -> None:
    src = make_file(tmp_path, 3 * MB + 17)
    storage.put_file("jobs/abc/0.png", src, "image/png")
    with storage.open("jobs/abc/0.png") as stream:
        first = stream.read(1000)
        rest = stream.read()
    assert first + rest == src.read_bytes()
    assert storage.size("jobs/abc/0.png") == 3 * MB + 17


def test_putting_a_key_again_overwrites_it(storage: Storage, tmp_path: Path) -> None:
    one, two = make_file(tmp_path, 1000, "one"), make_file(tmp_path, 2000, "two", b"y")
    storage.put_file("jobs/k/0.png", one, "image/png")
    storage.put_file("jobs/k/0.png", one, "image/png")  # a retried put: harmless
    with storage.open("jobs/k/0.png") as stream:
        assert stream.read() == one.read_bytes()
    storage.put_file("jobs/k/0.png", two, "image/png")
    with storage.open("jobs/k/0.png") as stream:
        assert stream.read() == two.read_bytes()


def test_exists_size_and_delete(storage: Storage, tmp_path: Path) -> None:
    key = "jobs/e/1.webp"
    assert not storage.exists(key)
    assert storage.size(key) is None
    storage.delete(key)  # missing: fine
    storage.put_file(key, make_file(tmp_path, 4321), "image/webp")
    assert storage.exists(key)
    assert storage.size(key) == 4321
    assert not storage.exists("jobs/e")  # a "directory" is no object
    storage.delete(key)
    assert not storage.exists(key)
    assert storage.size(key) is None
    storage.delete(key)


def test_opening_a_missing_key_is_a_permanent_failure(storage: Storage) -> None:
    with pytest.raises(StorageFailed) as caught:
        storage.open("jobs/none/0.png")
    assert caught.value.retryable is False
    assert "jobs/none/0.png" in str(caught.value)


BAD_KEYS = ["", "/abs/0.png", "jobs/../x", "..", "jobs//0.png", "jobs/", "a\\b", "./a", "a/./b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_could_leave_the_root_are_refused(
    storage: Storage, tmp_path: Path, key: str
) -> None:
    src = make_file(tmp_path, 10)
    for call in (
        lambda: storage.put_file(key, src, "image/png"),
        lambda: storage.open(key),
        lambda: storage.exists(key),
        lambda: storage.size(key),
        lambda: storage.delete(key),
        lambda: storage.presigned_url(key, 60),
    ):
        with pytest.raises(ValueError):
            call()


def test_a_presigned_url_downloads_the_object(storage: Storage, tmp_path: Path) -> None:
    src = make_file(tmp_path, 200_000)
    storage.put_file("jobs/p/0.png", src, "image/png")
    url = storage.presigned_url("jobs/p/0.png", 300)
    if storage.scheme == "file":
        assert url is None
        return
    assert url is not None
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["300"]
    answer = httpx.get(url)  # no credentials: the signature alone
    assert answer.status_code == 200
    assert answer.content == src.read_bytes()
    assert answer.headers["content-type"] == "image/png"


def test_check_passes_on_a_usable_store(storage: Storage) -> None:
    storage.check()
    assert storage.describe().startswith(f"{storage.scheme}://")


def test_s3_objects_sit_under_the_prefix(s3_bucket: str, moto_client: Any, tmp_path: Path) -> None:
    storage = open_storage(f"s3://{s3_bucket}/a/b/")
    storage.put_file("jobs/x/0.png", make_file(tmp_path, 10), "image/png")
    storage.check()  # its probe is removed again
    listed = moto_client.list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["a/b/jobs/x/0.png"]
    assert storage.describe() == f"s3://{s3_bucket}/a/b"


def test_check_fails_for_a_missing_bucket(s3_bucket: str) -> None:
    storage = open_storage("s3://imagegen-no-such-bucket/images")
    with pytest.raises(StorageFailed) as caught:
        storage.check()
    assert "s3://imagegen-no-such-bucket/images" in str(caught.value)
    assert "no such bucket" in str(caught.value)
    assert caught.value.retryable is False


def test_check_fails_for_an_unreachable_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    point_aws_at(monkeypatch, endpoint)
    storage = open_storage("s3://bucket/images")
    with pytest.raises(StorageFailed) as caught:
        storage.check()
    assert endpoint in str(caught.value) and "s3://bucket/images" in str(caught.value)
    assert caught.value.retryable is True
    with pytest.raises(StorageFailed) as caught:
        storage.put_file("jobs/u/0.png", make_file(tmp_path, 10), "image/png")
    assert caught.value.retryable is True
    assert "\n" not in str(caught.value)


def test_check_fails_for_a_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_bytes(b"")
    storage = open_storage(f"file:{tmp_path}/plain-file/store")
    with pytest.raises(StorageFailed) as caught:
        storage.check()
    assert f"{tmp_path}/plain-file/store" in str(caught.value)
    with pytest.raises(StorageFailed):
        storage.put_file("jobs/a/0.png", make_file(tmp_path, 10), "image/png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes")
def test_check_fails_for_a_read_only_directory(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    with pytest.raises(StorageFailed, match="not writable"):
        LocalStorage(root).check()


def test_missing_credentials_are_a_permanent_failure(
    s3_storage_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = open_storage(s3_storage_url)
    with pytest.raises(StorageFailed, match="NoCredentialsError") as caught:
        storage.put_file("jobs/c/0.png", make_file(tmp_path, 10), "image/png")
    assert caught.value.retryable is False


def test_the_s3_client_is_built_once_across_threads(s3_storage_url: str) -> None:
    storage = open_storage(s3_storage_url)
    assert isinstance(storage, S3Storage)
    seen: list[object] = []  # the clients themselves (an id could be reused after a free)
    threads = [threading.Thread(target=lambda: seen.append(storage.client)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and all(client is seen[0] for client in seen)


def test_a_large_s3_put_goes_multipart(
    s3_bucket: str, moto_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    small = 5 * MB  # S3's smallest part, so 12 MB is three parts
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", small)
    transfer = s3_module.TransferConfig(multipart_threshold=small, multipart_chunksize=small)
    monkeypatch.setattr(s3_module, "_TRANSFER", transfer)
    storage = open_storage(f"s3://{s3_bucket}/images")
    src = make_file(tmp_path, 12 * MB)
    storage.put_file("jobs/big/0.png", src, "image/png")
    head = moto_client.head_object(Bucket=s3_bucket, Key="images/jobs/big/0.png")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag
    assert head["ContentType"] == "image/png"
    with storage.open("jobs/big/0.png") as stream:
        assert stream.read() == src.read_bytes()


def test_a_failed_local_put_keeps_the_old_object_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, old = LocalStorage(tmp_path / "store"), make_file(tmp_path, 5000)
    storage.put_file("jobs/t/0.png", old, "image/png")
    with pytest.raises(StorageFailed) as caught:
        storage.put_file("jobs/t/0.png", tmp_path / "no-such-source", "image/png")
    assert caught.value.retryable is False

    def disk_full(source: object, out: object) -> None:
        raise OSError(28, "No space left on device")  # as if it failed halfway through

    monkeypatch.setattr("shutil.copyfileobj", disk_full)
    with pytest.raises(StorageFailed, match="No space left") as caught:
        storage.put_file("jobs/t/0.png", make_file(tmp_path, 9000, "new"), "image/png")
    assert caught.value.retryable is True
    assert [p.name for p in (tmp_path / "store/jobs/t").iterdir()] == ["0.png"]
    assert (tmp_path / "store/jobs/t/0.png").read_bytes() == old.read_bytes()
    assert (tmp_path / "store/jobs/t/0.png").stat().st_mode & 0o777 == 0o644


def test_an_s3_read_cut_short_is_a_storage_failure(s3_storage_url: str, tmp_path: Path) -> None:
    storage = open_storage(s3_storage_url)
    storage.put_file("jobs/r/0.png", make_file(tmp_path, 1000), "image/png")
    reading = storage.open("jobs/r/0.png")
    with pytest.raises(StorageFailed, match=r"read jobs/r/0\.png failed") as caught, reading as s:
        s.read(10)  # then the connection drops, as botocore reports it:
        raise ResponseStreamingError(error="connection reset")
    assert caught.value.retryable is True
