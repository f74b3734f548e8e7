"""`imagegen stats` on Postgres reads totals kept by triggers: they must equal a live count."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, update
from sqlalchemy.orm import Session

from models import AttemptOutcome, JobStatus, utcnow
from tests.conftest import Stack, add_jobs
from worker import queries, store
from worker.db import get_engine, session_scope


def _live(session: Session) -> dict[str, object]:
    by_status, refusals, submissions = queries.live_counts(session)
    by_category: dict[str, int] = {}
    for category, _source, count in refusals:
        by_category[category] = by_category.get(category, 0) + count
    return {
        "by_status": {s.value: by_status.get(s.value, 0) for s in JobStatus},
        "by_refusal_category": by_category,
        "fal_submissions": submissions,
        "total": sum(by_status.values()),
    }


def _kept(database_url: str) -> dict[str, object]:
    with session_scope(database_url) as session:
        stats = queries.stats(session=session)
        live = _live(session)
    assert stats["by_status"] == live["by_status"]
    assert stats["by_refusal_category"] == live["by_refusal_category"]
    assert stats["fal_submissions"] == live["fal_submissions"]
    assert stats["total"] == live["total"]
    return stats


def test_kept_totals_follow_every_change_a_job_goes_through(database_url: str) -> None:
    engine = get_engine(database_url)
    queued = add_jobs(database_url, 6, JobStatus.QUEUED)
    add_jobs(database_url, 2, JobStatus.SUCCEEDED, attempts=1)  # inserted already finished
    _kept(database_url)

    with engine.begin() as db:  # claimed and counted, as the worker does it
        for job_id in queued:
            store.claim_first_submit(db=db, job_id=job_id, owner="o", lease_s=60)
        store.begin_attempt(db=db, job_id=queued[0])  # a second submission
        store.retract_attempt(db=db, job_id=queued[0], number=2)  # ... that never left
    stats = _kept(database_url)
    assert stats["by_status"]["running"] == 6 and stats["fal_submissions"] == 6

    with engine.begin() as db:
        store.finish(
            db=db, job_id=queued[0], status=JobStatus.SUCCEEDED,
            attempt=(1, AttemptOutcome.SUCCEEDED), images=[{"url": "https://x/1.png"}],
        )  # fmt: skip
        for job_id, source in ((queued[1], "fal"), (queued[2], "prefilter")):
            store.finish(
                db=db, job_id=job_id, status=JobStatus.REFUSED,
                refusal_category="celebrity_likeness", refusal_message="no", refusal_source=source,
            )  # fmt: skip
        store.finish(db=db, job_id=queued[3], status=JobStatus.FAILED, error="boom")
        store.finish(db=db, job_id=queued[4], status=JobStatus.CANCELLED)
        # an operator's bulk fix: a refused job's category corrected, one failed job removed
        db.execute(
            update(store.JOBS)
            .where(store.JOBS.c.id == queued[1])
            .values(refusal_category="trademark_ip")
        )
        db.execute(delete(store.ATTEMPTS).where(store.ATTEMPTS.c.job_id == queued[3]))
        db.execute(delete(store.JOBS).where(store.JOBS.c.id == queued[3]))
    stats = _kept(database_url)
    assert stats["by_status"] == {
        "queued": 0, "running": 1, "succeeded": 3, "refused": 2, "failed": 0, "cancelled": 1,
    }  # fmt: skip
    assert stats["by_refusal_category"] == {"trademark_ip": 1, "celebrity_likeness": 1}
    assert stats["by_refusal_source"] == {
        "fal": {"trademark_ip": 1}, "prefilter": {"celebrity_likeness": 1},
    }  # fmt: skip
    assert stats["fal_submissions"] == 5


def test_stats_count_rows_written_before_the_totals_existed(database_url: str) -> None:
    """Migration 0006 counts the rows already there (here: re-run on a filled table)."""
    from worker.db import downgrade, upgrade

    add_jobs(database_url, 3, JobStatus.REFUSED, refusal_category="trademark_ip")
    add_jobs(database_url, 2, JobStatus.QUEUED)
    downgrade(database_url, "0005")
    add_jobs(database_url, 4, JobStatus.FAILED, error="x")  # while no trigger counted
    upgrade(database_url)
    stats = _kept(database_url)
    assert stats["by_status"]["failed"] == 4 and stats["by_status"]["refused"] == 3


def test_the_sweeper_expires_a_backlog_in_short_batches_and_the_totals_follow(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import sweeper

    monkeypatch.setattr(sweeper, "BATCH", 2)
    past = utcnow() - timedelta(hours=1)
    overdue = add_jobs(stack.database_url, 5, JobStatus.QUEUED, deadline_at=past, lease_until=past)
    updated: list[int] = []

    def count(_conn: object, cursor: Any, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE jobs SET status"):
            updated.append(cursor.rowcount)

    engine = get_engine(stack.database_url)
    event.listen(engine, "after_cursor_execute", count)
    try:
        report = sweeper.sweep(stack.settings(), stack.app())
    finally:
        event.remove(engine, "after_cursor_execute", count)
    assert sorted(report.expired) == sorted(overdue)  # all five in one pass,
    assert updated == [2, 2, 1]  # two a statement
    assert report.republished == []
    stats = _kept(stack.database_url)
    assert stats["by_status"]["failed"] == 5
