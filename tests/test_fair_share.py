"""The fair share end to end: two real workers, the poller, Redis, Postgres and the emulator.

Tenant A fills the fleet cap with a backlog; tenant B's jobs, enqueued later, are submitted
with the next freed slots, not after A's backlog. With IMAGEGEN_FAIR_SHARE=false (FIFO)
they wait for all of it (the comparison shows the test can fail)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import pytest
from sqlalchemy import select

from imagegen.models import Job, JobAttempt, JobStatus
from imagegen.worker.db import session_scope
from imagegen.worker.jobs.enqueue import enqueue_many
from imagegen.worker.tenants.keys import create_tenant
from tests.conftest import Stack, unique

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
A_JOBS, B_JOBS = 12, 2


def _first_submits(stack: Stack) -> dict[uuid.UUID, datetime]:
    with session_scope(stack.database_url) as session:
        rows = session.execute(select(JobAttempt.job_id, JobAttempt.started_at)).all()
    first: dict[uuid.UUID, datetime] = {}
    for job_id, at in rows:
        first[job_id] = min(at, first.get(job_id, at))
    return first


def _wait_backlog_waiting(stack: Stack, ids: list[uuid.UUID], timeout_s: float = 30) -> None:
    """Until none of ``ids`` is queued or being claimed: each is waiting, at fal or on."""
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(stack.database_url) as session:
            statuses = session.execute(select(Job.status).where(Job.id.in_(ids))).scalars().all()
        if JobStatus.WAITING in statuses and not {JobStatus.QUEUED, JobStatus.SUBMITTING} & set(
            statuses
        ):
            return
        assert time.monotonic() < deadline, f"A's backlog is not waiting: {statuses}"
        time.sleep(0.05)


def _run(stack: Stack, fair: bool) -> int:
    """How many of A's jobs were submitted after B enqueued and before B's last submit."""
    stack.emulator.configure(latency_s=0.6, concurrency_limit=None, reject_over_limit=False)
    env = {"IMAGEGEN_FAL_CONCURRENCY": "2", "IMAGEGEN_FAIR_SHARE": str(fair).lower()}
    stack.env.update(env)
    stack.start_worker(extra_env=env)
    stack.start_worker(extra_env=env)
    for name in ("a", "b"):
        create_tenant(stack.database_url, name)
    settings, app = stack.settings(), stack.app()
    a_items = [{"prompt": unique(f"a {i}"), "tenant": "a"} for i in range(A_JOBS)]
    a_ids = enqueue_many(a_items, settings=settings, app=app)
    _wait_backlog_waiting(stack, a_ids)  # A holds both slots, the rest of it waits
    b_items = [{"prompt": unique(f"b {i}"), "tenant": "b"} for i in range(B_JOBS)]
    b_enqueued = datetime.now().astimezone()
    b_ids = enqueue_many(b_items, settings=settings, app=app)
    jobs = [stack.wait_terminal(job_id, timeout_s=60) for job_id in [*a_ids, *b_ids]]
    assert {job["status"] for job in jobs} == {"succeeded"}
    first = _first_submits(stack)
    b_last = max(first[job_id] for job_id in b_ids)
    return sum(1 for job_id in a_ids if b_enqueued <= first[job_id] < b_last)


def test_a_later_tenant_gets_the_next_freed_slots(stack: Stack) -> None:
    ahead = _run(stack, fair=True)
    # B holds no slot, A holds both: B takes the next free one, and at most a tie's one more
    assert ahead <= 2, f"{ahead} of A's jobs went ahead of B's"


def test_plain_fifo_makes_the_later_tenant_wait_for_the_backlog(stack: Stack) -> None:
    ahead = _run(stack, fair=False)
    assert ahead >= A_JOBS - 4, f"only {ahead} of A's jobs went ahead of B's under FIFO"
