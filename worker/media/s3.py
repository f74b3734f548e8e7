"""The S3 store (AWS or any S3-compatible service) through boto3.

Endpoint, region and credentials come from boto3's own chain (AWS_ENDPOINT_URL_S3,
AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, profiles, instance
roles). Every botocore failure leaves this module as one ``StorageFailed`` line, retryable
for connection trouble, 5xx and throttling, not for 403, a missing bucket or credentials.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from imagegen.worker.errors import StorageFailed
from imagegen.worker.media.storage import validate_key

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

#: Up to this size one streamed PUT; above it a multipart upload (5 GB is S3's PUT limit,
#: and a failed part is retried alone).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
_TRANSFER = TransferConfig(
    multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4
)
#: Answers that may differ on another try (besides any 5xx).
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}
_MISSING = {"404", "NoSuchKey", "NotFound"}
#: A fixed name, so probes never pile up even when the delete is not permitted.
_PROBE = ".imagegen-check"


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", "?"))


def _classify(err: BaseException) -> tuple[str, bool]:
    """A one-line reason and whether a retry may help."""
    if isinstance(err, S3UploadFailedError) and err.__context__ is not None:
        err = err.__context__  # boto3 raises it while handling the real ClientError
    if isinstance(err, ClientError):
        error, code = err.response.get("Error", {}), _code(err)
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = str(error.get("Message") or "").splitlines()[0:1]
        reason = f"{code} (HTTP {status})" + (f": {message[0]}" if message else "")
        retryable = status >= 500 or status in (408, 429) or code in _RETRYABLE_CODES
        return reason, retryable
    transient = (BotoConnectionError, HTTPClientError, IncompleteReadError)
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{type(err).__name__}: {reason}", isinstance(err, transient)


class S3Storage:
    """Objects under ``s3://bucket/prefix``; one lazily built, thread-safe client each."""

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        path_style: bool | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            signature_version="s3v4",
            s3={"addressing_style": "path" if _path_style(path_style) else "auto"},
        )
        self._client: S3Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> S3Client:
        """Built on first use (a session is not thread-safe, the client it makes is)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = boto3.session.Session().client("s3", config=self._config)
        return self._client

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _failed(self, action: str, key: str, err: BaseException) -> StorageFailed:
        reason, retryable = _classify(err)
        return StorageFailed(
            f"storage {self.describe()}: {action} {key} failed: {reason}", retryable=retryable
        )

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        """One PUT streamed from the open file, or a multipart upload for a large file."""
        name = self._key(key)
        try:
            size = os.stat(path).st_size
            if size > MULTIPART_THRESHOLD:
                self.client.upload_file(
                    str(path),
                    self.bucket,
                    name,
                    ExtraArgs={"ContentType": content_type},
                    Config=_TRANSFER,
                )
                return
            with open(path, "rb") as body:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=name,
                    Body=body,
                    ContentType=content_type,
                    ContentLength=size,
                )
        except OSError as err:
            raise StorageFailed(
                f"storage {self.describe()}: put {key}: cannot read {path}: {err.strerror}",
                retryable=False,
            ) from err
        except (BotoCoreError, ClientError, S3UploadFailedError) as err:
            raise self._failed("put", key, err) from err

    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """The object's StreamingBody; the GET is sent now, so a missing key raises here."""
        name = self._key(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        except ClientError as err:
            if _code(err) in _MISSING:
                raise StorageFailed(
                    f"storage {self.describe()}: no object {key}", retryable=False
                ) from err
            raise self._failed("open", key, err) from err
        except BotoCoreError as err:
            raise self._failed("open", key, err) from err
        return self._reading(key, cast(BinaryIO, body))

    @contextlib.contextmanager
    def _reading(self, key: str, body: BinaryIO) -> Iterator[BinaryIO]:
        """Close the body on exit; a connection dropped mid-read becomes StorageFailed."""
        try:
            yield body
        except (BotoCoreError, ClientError) as err:
            raise self._failed("read", key, err) from err
        finally:
            body.close()

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as err:
            if _code(err) in _MISSING:
                return None
            raise self._failed("head", key, err) from err
        except BotoCoreError as err:
            raise self._failed("head", key, err) from err

    def exists(self, key: str) -> bool:
        return self._head(self._key(key)) is not None

    def size(self, key: str) -> int | None:
        head = self._head(self._key(key))
        return None if head is None else int(head["ContentLength"])

    def delete(self, key: str) -> None:
        """S3 answers 204 for a missing key too."""
        name = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as err:
            raise self._failed("delete", key, err) from err

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A SigV4 GET URL signed here, without a request; valid ``expires_s`` (<= 7 days)."""
        if not 1 <= expires_s <= 604_800:
            raise ValueError(f"expires_s must be 1..604800 (SigV4's limit), not {expires_s}")
        name = self._key(key)
        try:
            return self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": name},
                ExpiresIn=expires_s,
            )
        except (BotoCoreError, ClientError) as err:
            raise self._failed("presign", key, err) from err

    def check(self) -> None:
        """The bucket answers and takes a PUT (a tiny probe, removed again when allowed)."""
        probe = self._key(_PROBE)
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
        except (BotoCoreError, ClientError) as err:
            reason, retryable = _classify(err)
            if isinstance(err, ClientError) and _code(err) in ("404", "403"):  # HEAD: no body
                reason = {"404": "no such bucket", "403": "access denied"}[_code(err)]
            raise StorageFailed(
                f"storage {self.describe()} (endpoint {self._endpoint()}) is not usable: {reason}",
                retryable=retryable,
            ) from err
        with contextlib.suppress(BotoCoreError, ClientError):
            self.client.delete_object(Bucket=self.bucket, Key=probe)

    def _endpoint(self) -> str:
        """The endpoint URL without any user:password part."""
        parts = urlsplit(self.client.meta.endpoint_url)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _path_style(explicit: bool | None) -> bool:
    """Path-style addressing for a custom endpoint (MinIO, moto: ``bucket.host`` rarely
    resolves there); AWS itself gets botocore's choice."""
    if explicit is not None:
        return explicit
    return bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
