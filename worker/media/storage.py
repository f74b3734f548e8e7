"""Where stored images live: one ``Storage`` interface, a local directory or an S3 bucket.

``open_storage(IMAGEGEN_STORAGE_URL)`` picks the backend. S3 goes through boto3, not obstore:
both stream a file up and presign locally, but boto3 is the reference client (the whole AWS_*,
profile and instance-role chain), pure Python, and what moto's S3 server is tested against;
obstore adds a compiled Rust wheel and its own reading of that configuration.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from imagegen.worker.errors import ConfigurationError

ACCEPTED_FORMS = "file:///abs/dir, file:relative/dir, a plain path, or s3://bucket[/prefix]"
#: Lenient on purpose: S3-compatible stores accept more than AWS's DNS-style names.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


class Storage(Protocol):
    """An object store addressed by relative slash keys (``jobs/<uuid>/0.png``)."""

    scheme: str

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the file at ``key``, streamed from disk; the same key again overwrites."""

    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A streaming read of ``key``; a missing key is ``StorageFailed(retryable=False)``."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""

    def size(self, key: str) -> int | None:
        """The object's size in bytes, None when there is none."""

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A time-limited GET URL for ``key`` (S3), or None where there is none (local)."""

    def check(self) -> None:
        """Raise ``StorageFailed`` naming the target unless it is reachable and writable."""

    def describe(self) -> str:
        """The storage URL without credentials, for logs and ``imagegen doctor``."""


def validate_key(key: str) -> str:
    """The key, if it is a relative slash path that cannot leave the store's root."""
    if not isinstance(key, str) or not key:
        raise ValueError("a storage key must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"storage key {key!r}: no leading slash, backslash or NUL allowed")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"storage key {key!r}: empty, '.' and '..' segments are not allowed")
    return key


def _bad(detail: str) -> ConfigurationError:
    return ConfigurationError(f"IMAGEGEN_STORAGE_URL {detail}; accepted: {ACCEPTED_FORMS}")


def _s3_parts(url: str) -> tuple[str, str]:
    """Bucket and prefix of ``s3://bucket[/prefix]`` (credentials in the URL are refused)."""
    parts = urlsplit(url)
    if "@" in parts.netloc or ":" in parts.netloc:
        raise _bad("must not carry credentials or a port (use AWS_* variables)")
    if parts.query or parts.fragment:
        raise _bad("must not have a query or fragment")
    if not _BUCKET.match(parts.netloc):
        raise _bad("needs a bucket name after s3://")
    prefix = unquote(parts.path).strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except ValueError:
            raise _bad(f"has a bad prefix {prefix!r}") from None
    return parts.netloc, prefix


def _local_dir(url: str) -> Path:
    """The directory a ``file:`` URL or a plain path names (relative ones against the cwd)."""
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _bad("file:// needs an absolute path (file:///abs/dir)")
        raw = unquote(parts.path)
    elif url.startswith("file:"):
        raw = unquote(url[len("file:") :])
    else:
        raw = url
    if not raw or "\x00" in raw:
        raise _bad("names no directory")
    return Path(raw).expanduser().absolute()


def open_storage(
    url: str, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0
) -> Storage:
    """The ``Storage`` that ``url`` (IMAGEGEN_STORAGE_URL) names; ConfigurationError if none.

    The backends are imported here, not at module level: they import ``validate_key`` from
    this module, and a local store never needs boto3 loaded.
    """
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url) else ""
    if scheme == "s3":
        from imagegen.worker.media.s3 import S3Storage

        bucket, prefix = _s3_parts(url)
        return S3Storage(
            bucket, prefix, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s
        )
    if scheme in ("", "file"):
        from imagegen.worker.media.local import LocalStorage

        return LocalStorage(_local_dir(url))
    raise _bad(f"has an unsupported scheme {scheme!r}")
