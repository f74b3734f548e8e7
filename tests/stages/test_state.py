"""The move table (worker/jobs/state.py): every allowed move does what it says, every other
one is refused and changes nothing, and the lease guards hold. A migrated SQLite file per test.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from imagegen.models import TERMINAL_STATUSES, JobStatus, utcnow
from imagegen.worker.db import write
from imagegen.worker.jobs import state
from imagegen.worker.jobs.deps import Deps
from tests.stages.kit import (
    add_job,
    job,
)

OWNER = "owner-a"


def row_in(deps: Deps, status: JobStatus, *, owner: str | None, live: bool = True) -> uuid.UUID:
    now = utcnow()
    lease = now + timedelta(seconds=60 if live else -60)
    return add_job(
        deps,
        status=status,
        lease_owner=owner,
        lease_until=lease,
        fal_request_id=None if status is JobStatus.QUEUED else "req-1",
    )


ALLOWED = [(name, source) for name, m in sorted(state.MOVES.items()) for source in m.sources]


def run_move(deps: Deps, job_id: uuid.UUID, name: str, owner: str = OWNER) -> state.Moved | None:
    lease_s = 30.0 if state.MOVES[name].leases else None
    return write(
        deps.settings.database_url,
        lambda db: state.move(db, job_id, name, owner=owner, lease_s=lease_s),
    )


@pytest.mark.parametrize(("name", "source"), ALLOWED, ids=[f"{n}-{s}" for n, s in ALLOWED])
def test_every_allowed_move_does_what_it_says(deps: Deps, name: str, source: JobStatus) -> None:
    move = state.MOVES[name]
    holder = OWNER if move.guard is state.Guard.OWNER else None
    job_id = row_in(deps, source, owner=holder)
    moved = run_move(deps, job_id, name)
    assert moved is not None and moved.job.status is move.target
    row = job(deps, job_id)
    assert row["status"] is move.target
    assert row["lease_owner"] == (OWNER if move.leases else None)
    assert (row["finished_at"] is not None) == (move.target in TERMINAL_STATUSES)
    assert state.allowed(source, move.target)


def test_every_move_from_any_other_state_is_refused_and_changes_nothing(deps: Deps) -> None:
    # the owner's lease has run out: only the source state can refuse the move
    rows = {status: row_in(deps, status, owner=OWNER, live=False) for status in JobStatus}
    before = {status: job(deps, job_id) for status, job_id in rows.items()}
    tried = 0
    for name, move in state.MOVES.items():
        for status in set(JobStatus) - set(move.sources):
            assert run_move(deps, rows[status], name) is None, (name, status)
            tried += 1
    assert {status: job(deps, job_id) for status, job_id in rows.items()} == before
    assert tried == len(state.MOVES) * len(JobStatus) - len(ALLOWED)


def test_an_illegal_move_returns_none_and_changes_nothing(deps: Deps) -> None:
    job_id = add_job(deps)
    before = job(deps, job_id)
    succeed = lambda db: state.move(db, job_id, "succeed", owner=OWNER)  # noqa: E731
    assert write(deps.settings.database_url, succeed) is None
    assert job(deps, job_id) == before
    assert not state.allowed(JobStatus.QUEUED, JobStatus.SUCCEEDED)


def test_the_owner_guard_rejects_another_owner(deps: Deps) -> None:
    job_id = row_in(deps, JobStatus.SUBMITTING, owner=OWNER)
    before = job(deps, job_id)
    theirs = lambda db: state.move(db, job_id, "submitted", owner="owner-b")  # noqa: E731
    assert write(deps.settings.database_url, theirs) is None
    assert job(deps, job_id) == before
    ours = lambda db: state.move(db, job_id, "submitted", owner=OWNER)  # noqa: E731
    assert write(deps.settings.database_url, ours) is not None


def test_the_free_guard_waits_for_a_live_lease_to_run_out(deps: Deps) -> None:
    held = row_in(deps, JobStatus.SUBMITTING, owner=OWNER)
    lapsed = row_in(deps, JobStatus.SUBMITTING, owner=OWNER, live=False)

    def claim(job_id: uuid.UUID) -> state.Moved | None:
        return write(
            deps.settings.database_url,
            lambda db: state.move(db, job_id, "claim", owner="owner-b", lease_s=30.0),
        )

    assert claim(held) is None and job(deps, held)["lease_owner"] == OWNER
    assert claim(lapsed) is not None and job(deps, lapsed)["lease_owner"] == "owner-b"


def test_move_refuses_a_status_value_and_a_missing_owner(deps: Deps) -> None:
    job_id = add_job(deps)
    with pytest.raises(ValueError, match="through a move"):
        write(
            deps.settings.database_url,
            lambda db: state.move(db, job_id, "cancel", values={"status": "failed"}),
        )
    with pytest.raises(ValueError, match="lease owner"):
        write(deps.settings.database_url, lambda db: state.move(db, job_id, "claim"))
