"""The local-directory store: keys are paths under one root directory.

A put writes a temporary file beside its target and ``os.replace``s it in (after an fsync),
so a reader or a crash sees the old object or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from imagegen.worker.errors import StorageFailed
from imagegen.worker.media.storage import validate_key

#: Errors a second try will not fix (the rest, e.g. a full disk or EIO, may pass).
_PERMANENT = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT}
#: Stored files are readable by whoever serves the directory; mkstemp would leave 0600.
_FILE_MODE = 0o644


class LocalStorage:
    """Objects as files under ``root`` (created as needed)."""

    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _failed(self, action: str, key: str, err: OSError) -> StorageFailed:
        reason = err.strerror or type(err).__name__
        return StorageFailed(
            f"storage {self.describe()}: {action} {key} failed: {reason}",
            retryable=err.errno not in _PERMANENT,
        )

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Copy ``path`` in by chunks (never whole in memory); ``content_type`` is unused here."""
        target = self._path(key)
        try:
            source = open(path, "rb")  # noqa: SIM115 (closed below, before any temp file)
        except OSError as err:
            raise StorageFailed(
                f"storage {self.describe()}: put {key}: cannot read {path}: {err.strerror}",
                retryable=False,
            ) from err
        with source:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._write_atomically(source, target)
            except OSError as err:
                raise self._failed("put", key, err) from err

    @staticmethod
    def _write_atomically(source: BinaryIO, target: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out)
                out.flush()
                os.fchmod(out.fileno(), _FILE_MODE)
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)

    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """The open file (opened now, so a missing key raises here, not in ``with``)."""
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError as err:
            raise StorageFailed(
                f"storage {self.describe()}: no object {key}", retryable=False
            ) from err
        except OSError as err:
            raise self._failed("open", key, err) from err

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            return path.stat().st_size if path.is_file() else None
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._failed("stat", key, err) from err

    def delete(self, key: str) -> None:
        """Remove the file; empty job directories are left (harmless, reused by a later put)."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as err:
            raise self._failed("delete", key, err) from err

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        validate_key(key)
        return None

    def check(self) -> None:
        """Create the root if needed and write (then remove) a probe file in it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".imagegen-check.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise StorageFailed(
                f"storage {self.describe()} is not writable: {err.strerror or err}",
                retryable=err.errno not in _PERMANENT,
            ) from err

    def describe(self) -> str:
        return self.root.as_uri()


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); platforms without directory fds just skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
