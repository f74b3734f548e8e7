"""Fixtures of the stage unit tests: a migrated SQLite file per test (copied from one
migrated per module), the in-memory fal, and a Celery app that records what it is sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen.worker.db import dispose_engines
from imagegen.worker.fal.fake import FakeFal
from imagegen.worker.jobs.deps import Deps
from tests.stages.kit import RecordingApp, copy_of, make_deps, migrate


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield migrate(tmp_path_factory.mktemp("stages"))
    dispose_engines()


@pytest.fixture
def url(migrated: Path, tmp_path: Path) -> Iterator[str]:
    yield copy_of(migrated, tmp_path)
    dispose_engines()


@pytest.fixture
def fal() -> FakeFal:
    return FakeFal()


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def deps(url: str, fal: FakeFal, app: RecordingApp) -> Deps:
    return make_deps(url, fal, app)
