"""IMAGEGEN_STORAGE_URL parsing, and how S3's answers are classified (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from imagegen.worker.errors import ConfigurationError
from imagegen.worker.media.local import LocalStorage
from imagegen.worker.media.s3 import S3Storage, _classify
from imagegen.worker.media.storage import open_storage


@pytest.mark.parametrize(
    ("url", "root"),
    [("file:///srv/images", "/srv/images"), ("file:rel/dir", "{cwd}/rel/dir"),
     ("file:./dir", "{cwd}/dir"), ("plain/dir", "{cwd}/plain/dir"), ("/abs/dir", "/abs/dir"),
     ("file://localhost/x%20y", "/x y"), ("  file:/abs  ", "/abs")],
)  # fmt: skip
def test_local_urls(url: str, root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage(url)
    assert isinstance(storage, LocalStorage)
    assert str(storage.root) == root.format(cwd=tmp_path)
    assert storage.scheme == "file"


@pytest.mark.parametrize(
    ("url", "prefix"), [("s3://b", ""), ("s3://b/", ""), ("s3://b/x/y/", "x/y"), ("S3://b/p", "p")]
)
def test_s3_urls(url: str, prefix: str) -> None:
    storage = open_storage(url)  # no request is made: the client is built on first use
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.scheme) == ("b", prefix, "s3")


BAD_URLS = ["", "http://host/x", "ftp:/x", "s3://", "s3:///prefix", "s3://AKIA:hunter2@bucket",
            "s3://bucket:9000/x", "s3://bucket?region=x", "s3://bucket/../x", "s3://bucket/a//b",
            "file://otherhost/x", "file://", "file:"]  # fmt: skip


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_storage(url)
    message = str(caught.value)
    assert "IMAGEGEN_STORAGE_URL" in message and "s3://bucket[/prefix]" in message
    assert "\n" not in message and "hunter2" not in message


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [(403, "AccessDenied", False), (404, "NoSuchBucket", False), (400, "InvalidArgument", False),
     (503, "SlowDown", True), (500, "InternalError", True), (502, "BadGateway", True),
     (400, "RequestTimeout", True),
     (429, "TooManyRequests", True)],
)  # fmt: skip
def test_s3_answers_are_classified(status: int, code: str, retryable: bool) -> None:
    err = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )
    reason, may_pass = _classify(err)
    assert may_pass is retryable
    assert code in reason and str(status) in reason


def test_credentials_in_an_s3_url_are_refused_with_a_pointer_to_aws_variables() -> None:
    with pytest.raises(ConfigurationError, match="AWS_") as caught:
        open_storage("s3://AKIAEXAMPLE:hunter2@bucket/images")
    assert "hunter2" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)
