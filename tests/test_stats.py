"""`imagegen stats` on Postgres reads totals kept by triggers: they must equal a live count."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, update
from sqlalchemy.orm import Session

from imagegen.models import JobStatus, utcnow
from imagegen.worker.db import get_engine, session_scope
from imagegen.worker.jobs import attempts, queries, state
from tests.conftest import Stack, add_jobs


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

    with engine.begin() as db:  # claimed and counted, as the submit stage does it
        for job_id in queued:
            state.move(db, job_id, "claim", owner="o", lease_s=60)
            attempts.begin(db, job_id)
        attempts.begin(db, queued[0])  # a second submission
        attempts.retract(db, queued[0], 2)  # ... that never left
    stats = _kept(database_url)
    assert stats["by_status"]["submitting"] == 6 and stats["fal_submissions"] == 6

    with engine.begin() as db:
        state.move(db, queued[0], "submitted", owner="o", values={"fal_request_id": "r"})
        state.move(db, queued[0], "completed")
        state.move(db, queued[0], "collect", owner="c", lease_s=60)
        state.move(
            db, queued[0], "succeed", owner="c", values={"images": [{"url": "https://x/1.png"}]}
        )
        for job_id, source in ((queued[1], "fal"), (queued[2], "prefilter")):
            refusal = {
                "refusal_category": "celebrity_likeness",
                "refusal_message": "no",
                "refusal_source": source,
            }
            state.move(db, job_id, "refuse", owner="o", values=refusal)
        state.move(db, queued[3], "fail", owner="o", values={"error": "boom"})
        state.move(db, queued[4], "cancel")
        # an operator's bulk fix: a refused job's category corrected, one failed job removed
        db.execute(
            update(state.JOBS)
            .where(state.JOBS.c.id == queued[1])
            .values(refusal_category="trademark_ip")
        )
        db.execute(delete(attempts.ATTEMPTS).where(attempts.ATTEMPTS.c.job_id == queued[3]))
        db.execute(delete(state.JOBS).where(state.JOBS.c.id == queued[3]))
    stats = _kept(database_url)
    assert stats["by_status"] == {
        "queued": 0, "waiting": 0, "submitting": 1, "at_fal": 0, "collecting": 0, "storing": 0,
        "succeeded": 3, "refused": 2, "failed": 0, "cancelled": 1,
    }  # fmt: skip
    assert stats["by_refusal_category"] == {"trademark_ip": 1, "celebrity_likeness": 1}
    assert stats["by_refusal_source"] == {
        "fal": {"trademark_ip": 1}, "prefilter": {"celebrity_likeness": 1},
    }  # fmt: skip
    assert stats["fal_submissions"] == 5


def test_stats_count_rows_written_before_the_totals_existed(database_url: str) -> None:
    """Migration 0006 counts the rows already there (here: re-run on a filled table)."""
    from imagegen.worker.db import downgrade, upgrade

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
    from imagegen.worker.jobs import sweeper

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
    assert updated == [1] * 5  # one guarded move each, in batches of BATCH ids
    assert report.republished == []
    stats = _kept(stack.database_url)
    assert stats["by_status"]["failed"] == 5
