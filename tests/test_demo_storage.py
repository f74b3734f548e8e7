"""The demo hands its worker and poller (another cwd) the storage the CLI sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen.worker.cli.demo import _absolute_storage


def test_relative_file_storage_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _absolute_storage("file:./imagegen-images") == f"file:{tmp_path / 'imagegen-images'}"
    assert _absolute_storage("images") == f"file:{tmp_path / 'images'}"
    for kept in ("file:///var/lib/imagegen", "s3://bucket/prefix", "file:/abs/dir"):
        assert _absolute_storage(kept) == kept
