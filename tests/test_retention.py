"""Retention and erasure (worker.media.retention, `imagegen purge`) on real Postgres.

Jobs are rows written straight into the table in the state each test needs; their stored
objects are files of the real local backend (``open_storage("file:...")``) in tmp_path.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagegen.models import JobStatus
from imagegen.worker.errors import JobConflict, JobNotFound, StorageFailed
from imagegen.worker.media.storage import Storage, open_storage
from tests.stored_jobs import FlakyDeletes, imagegen, keys_of, listing, row, stored_job

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]
DAY = timedelta(days=1)


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    """The real local backend, in this test's directory."""
    return open_storage("file:" + str(tmp_path / "store"))


def _mixed(database_url: str, storage: Storage) -> tuple[dict[str, uuid.UUID], dict[str, Any]]:
    """Old succeeded (with an input) and refused jobs, a recent one, an old open one."""
    jobs = {
        "old": stored_job(database_url, storage, age=40 * DAY, inputs=1),
        "refused": stored_job(
            database_url,
            storage,
            JobStatus.REFUSED,
            age=40 * DAY,
            outputs=0,
            refusal_category="celebrity_likeness",
            refusal_message="This prompt names a real person.",
        ),
        "recent": stored_job(database_url, storage, age=2 * DAY),
        "open": stored_job(database_url, storage, JobStatus.STORING, age=40 * DAY, inputs=1),
    }
    return jobs, {name: row(database_url, job_id) for name, job_id in jobs.items()}


def _purge(database_url: str, storage: Storage, *, dry_run: bool) -> dict[str, Any]:
    from imagegen.worker.media.retention import purge

    month = 30 * DAY
    report = purge(
        database_url, storage, images_older_than=month, prompts_older_than=month, dry_run=dry_run
    )
    return report.as_dict()


def test_a_dry_run_reports_what_would_go_and_changes_nothing(
    database_url: str, storage: Storage
) -> None:
    jobs, before = _mixed(database_url, storage)
    objects = listing(storage)
    old_bytes = sum(storage.size(k) or 0 for k in keys_of(before["old"]))
    assert _purge(database_url, storage, dry_run=True) == {
        "dry_run": True,
        "jobs": 2,
        "image_jobs": 2,
        "images_deleted": 3,
        "bytes_freed": old_bytes,
        "prompts_redacted": 2,
    }
    assert listing(storage) == objects
    assert {name: row(database_url, job_id) for name, job_id in jobs.items()} == before


def test_a_purge_touches_only_old_ended_jobs_keeps_outcomes_and_reruns_idempotently(
    database_url: str, storage: Storage
) -> None:
    jobs, before = _mixed(database_url, storage)
    old_bytes = sum(storage.size(k) or 0 for k in keys_of(before["old"]))
    done = _purge(database_url, storage, dry_run=False)
    assert done == {
        "dry_run": False,
        "jobs": 2,
        "image_jobs": 2,
        "images_deleted": 3,
        "bytes_freed": old_bytes,
        "prompts_redacted": 2,
    }
    assert not any(storage.exists(k) for k in keys_of(before["old"]))
    kept = ("status", "refusal_category", "refusal_message", "images", "inputs", "images_stored")
    for name in ("old", "refused"):
        after = row(database_url, jobs[name])
        assert after["images_purged_at"] and after["prompt_redacted_at"] and after["prompt"] == ""
        assert {k: after[k] for k in kept} == {k: before[name][k] for k in kept}
    for name in ("recent", "open"):
        assert row(database_url, jobs[name]) == before[name]
        assert all(storage.exists(k) for k in keys_of(before[name]))
    again = _purge(database_url, storage, dry_run=False)
    assert again == {**dict.fromkeys(done, 0), "dry_run": False}


def test_each_half_alone(database_url: str, storage: Storage) -> None:
    from imagegen.worker.media.retention import purge

    job_id = stored_job(database_url, storage, age=40 * DAY)
    keys = keys_of(row(database_url, job_id))
    prompts = purge(
        database_url, storage, images_older_than=None, prompts_older_than=30 * DAY, dry_run=False
    )
    assert (prompts.prompts_redacted, prompts.images_deleted) == (1, 0)
    assert all(storage.exists(k) for k in keys)
    assert row(database_url, job_id)["images_purged_at"] is None
    images = purge(
        database_url, storage, images_older_than=60 * DAY, prompts_older_than=None, dry_run=False
    )
    assert images.jobs == 0  # not old enough for this cut
    images = purge(
        database_url, storage, images_older_than=30 * DAY, prompts_older_than=None, dry_run=False
    )
    assert (images.jobs, images.images_deleted, images.prompts_redacted) == (1, 2, 0)


def test_a_crash_midway_marks_nothing_whose_objects_remain_and_a_rerun_finishes(
    database_url: str, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegen.worker.media import retention

    monkeypatch.setattr(retention, "BATCH", 2)  # several batches, keyset paging
    jobs = [stored_job(database_url, storage, age=40 * DAY, inputs=1) for _ in range(5)]
    dry = retention.purge(
        database_url, storage, images_older_than=DAY, prompts_older_than=None, dry_run=True
    )
    assert (dry.jobs, dry.image_jobs, dry.images_deleted) == (5, 5, 15)
    flaky = FlakyDeletes(storage, 7)  # storage fails in the middle of the second batch
    with pytest.raises(StorageFailed):
        retention.purge(
            database_url, flaky, images_older_than=DAY, prompts_older_than=None, dry_run=False
        )
    marked = [j for j in jobs if row(database_url, j)["images_purged_at"]]
    assert len(marked) == 2  # the first batch
    for job_id in jobs:
        job = row(database_url, job_id)
        if job["images_purged_at"]:
            assert not any(storage.exists(k) for k in keys_of(job)), job_id
    rerun = retention.purge(
        database_url, storage, images_older_than=DAY, prompts_older_than=None, dry_run=False
    )
    assert (rerun.image_jobs, rerun.images_deleted) == (3, 15 - 7)
    assert listing(storage) == {}
    assert all(row(database_url, j)["images_purged_at"] for j in jobs)
    prompts = retention.purge(
        database_url, storage, images_older_than=None, prompts_older_than=DAY, dry_run=False
    )
    assert prompts.prompts_redacted == 5 and all(row(database_url, j)["prompt"] == "" for j in jobs)


def test_purge_from_settings_uses_the_retention_days(database_url: str, storage: Storage) -> None:
    from imagegen.worker.media.retention import purge_from_settings
    from imagegen.worker.settings import Settings

    job_id = stored_job(database_url, storage, age=10 * DAY)
    off = Settings(DATABASE_URL=database_url)  # type: ignore[call-arg]
    assert purge_from_settings(off, storage).jobs == 0
    settings = Settings(DATABASE_URL=database_url, IMAGEGEN_IMAGE_RETENTION_DAYS="7")  # type: ignore[call-arg]
    report = purge_from_settings(settings, storage, dry_run=True)
    assert (report.image_jobs, report.prompts_redacted, report.dry_run) == (1, 0, True)
    report = purge_from_settings(settings, storage)
    assert row(database_url, job_id)["images_purged_at"] and report.images_deleted == 2
    assert row(database_url, job_id)["prompt"] == "a private prompt"


def test_erase_removes_a_jobs_images_and_prompt_whatever_its_age(
    database_url: str, storage: Storage
) -> None:
    from imagegen.worker.media.retention import erase

    job_id = stored_job(database_url, storage, inputs=2)
    other = stored_job(database_url, storage)
    keys = keys_of(row(database_url, job_id))
    report = erase(database_url, storage, job_id)
    assert (report.images_deleted, report.prompts_redacted) == (4, 1)
    assert not any(storage.exists(k) for k in keys)
    assert all(storage.exists(k) for k in keys_of(row(database_url, other)))
    after = row(database_url, job_id)
    assert after["prompt"] == "" and after["images_purged_at"] and after["prompt_redacted_at"]
    assert after["status"] == "succeeded" and len(after["images"]) == 2
    assert erase(database_url, storage, job_id).images_deleted == 0  # again: nothing left
    assert row(database_url, job_id)["images_purged_at"] == after["images_purged_at"]


def test_erase_refuses_an_open_job_and_names_an_unknown_one(
    database_url: str, storage: Storage
) -> None:
    from imagegen.worker.media.retention import erase

    job_id = stored_job(database_url, storage, JobStatus.STORING, inputs=1)
    objects = listing(storage)
    with pytest.raises(JobConflict, match="still storing: cancel it first"):
        erase(database_url, storage, job_id)
    assert listing(storage) == objects and row(database_url, job_id)["prompt"] == "a private prompt"
    with pytest.raises(JobNotFound):
        erase(database_url, storage, uuid.uuid4())


@pytest.fixture
def cli_env(
    database_url: str, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    """`imagegen` in-process on this test's database, its storage the test's."""
    from imagegen.worker.cli import media
    from imagegen.worker.db import dispose_engines
    from imagegen.worker.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setattr(media, "open_app_storage", lambda: storage)
    get_settings.cache_clear()
    yield CliRunner()
    dispose_engines()
    monkeypatch.delenv("DATABASE_URL")
    get_settings.cache_clear()


def test_cli_purge(cli_env: CliRunner, database_url: str, storage: Storage) -> None:
    job_id = stored_job(database_url, storage, age=40 * DAY)
    dry = imagegen(cli_env, "purge", "--older-than", "30d", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["images_deleted"] == 2 and len(listing(storage)) == 2
    done = imagegen(cli_env, "purge", "--older-than", "720h", "--prompts-older-than", "90m")
    assert done.exit_code == 0, done.output
    assert "removed: 1 job(s); 2 image(s)" in done.stdout and "1 prompt(s)" in done.stdout
    assert listing(storage) == {} and row(database_url, job_id)["prompt"] == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--older-than", "30 days"], "--older-than '30 days'"),
        (["--older-than", "30d", "--prompts-older-than", "0d"], "--prompts-older-than"),
        (["--dry-run"], "--older-than and/or --prompts-older-than"),
    ],
)
def test_cli_purge_refuses_bad_durations(cli_env: CliRunner, args: list[str], words: str) -> None:
    done = imagegen(cli_env, "purge", *args)
    assert done.exit_code == 2, done.output
    assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
