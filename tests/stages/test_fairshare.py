"""The fair share of the fleet cap (``worker.jobs.fairshare``): a job that finds the fleet
full waits, and a freed slot goes to the tenant furthest below its weighted share."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from imagegen.models import JobStatus, utcnow
from imagegen.worker.constants import SUBMIT_TASK
from imagegen.worker.db import write
from imagegen.worker.fal import due
from imagegen.worker.fal.fake import FakeFal
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.jobs import fairshare, state, submit
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.tenants.keys import create_tenant
from tests.stages.kit import RecordingApp, add_job, job, make_deps


def _tenant(deps: Deps, name: str, weight: float = 1.0) -> uuid.UUID:
    return create_tenant(deps.settings.database_url, name, weight=weight).id


def _jobs(deps: Deps, tenant: uuid.UUID, n: int, status: JobStatus) -> list[uuid.UUID]:
    """``n`` jobs of ``tenant`` in ``status``, oldest first (one second apart)."""
    start = utcnow() - timedelta(hours=1)
    ids = []
    for i in range(n):
        ids.append(add_job(deps, tenant_id=tenant, status=status))
        at = start + timedelta(seconds=len(ids) + i)
        values = {"created_at": at}
        query = state.JOBS.update().where(state.JOBS.c.id == ids[-1]).values(**values)
        write(deps.settings.database_url, lambda db, q=query: db.execute(q))
    if status is JobStatus.AT_FAL:
        for job_id in ids:
            assert deps.limiter.try_acquire(str(job_id))
    return ids


def _granted(app: RecordingApp) -> list[str]:
    return [args[0] for name, args, _ in app.sent if name == SUBMIT_TASK]


def test_a_full_fleet_parks_the_job_waiting_without_a_message(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=1)
    assert deps.limiter.try_acquire("another-job")
    job_id = add_job(deps)
    outcome = submit.run(job_id, deps)
    assert outcome.summary == "waiting" and outcome.retry_in is None
    row = job(deps, job_id)
    assert row["status"] is JobStatus.WAITING and row["lease_owner"] is None
    assert row["attempts"] == 0 and fal.submits == [] and _granted(app) == []
    assert deps.limiter.anyone_waiting() and deps.limiter.in_flight() == 1


def test_a_freed_slot_goes_to_the_tenant_below_its_share_not_the_oldest_job(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=2)
    a, b = _tenant(deps, "a"), _tenant(deps, "b")
    held = _jobs(deps, a, 2, JobStatus.AT_FAL)
    _jobs(deps, a, 3, JobStatus.WAITING)  # older than b's
    b_first, _ = _jobs(deps, b, 2, JobStatus.WAITING)
    deps.limiter.release(str(held[0]))
    assert fairshare.grant(deps.settings, deps.app, deps.limiter, always=True) == 1
    assert _granted(app) == [str(b_first)]
    row = job(deps, b_first)
    assert row["status"] is JobStatus.QUEUED and row["slot_granted_at"] is not None
    assert not deps.limiter.try_acquire("a-newcomer")  # the slot is kept for b's job


def test_plain_fifo_gives_the_slot_to_the_oldest_waiting_job(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=2, IMAGEGEN_FAIR_SHARE="false")
    a, b = _tenant(deps, "a"), _tenant(deps, "b")
    held = _jobs(deps, a, 2, JobStatus.AT_FAL)
    a_first = _jobs(deps, a, 3, JobStatus.WAITING)[0]
    _jobs(deps, b, 2, JobStatus.WAITING)
    deps.limiter.release(str(held[0]))
    fairshare.grant(deps.settings, deps.app, deps.limiter, always=True)
    assert _granted(app) == [str(a_first)]


def test_weights_scale_the_share(url: str, fal: FakeFal, app: RecordingApp) -> None:
    deps = make_deps(url, fal, app, limit=4)
    heavy, light = _tenant(deps, "heavy", weight=3), _tenant(deps, "light")
    _jobs(deps, heavy, 2, JobStatus.AT_FAL)  # 2 / 3 of its share ...
    _jobs(deps, light, 1, JobStatus.AT_FAL)  # ... below light's 1 / 1
    _jobs(deps, light, 1, JobStatus.WAITING)  # older
    heavy_first = _jobs(deps, heavy, 1, JobStatus.WAITING)[0]
    assert fairshare.grant(deps.settings, deps.app, deps.limiter, always=True) == 1
    assert _granted(app) == [str(heavy_first)]


def test_while_jobs_wait_a_new_submit_waits_too_and_the_granted_one_goes_through(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=1)
    assert deps.limiter.try_acquire("another-job")
    first = add_job(deps)
    assert submit.run(first, deps).summary == "waiting"
    deps.limiter.release("another-job")  # freed without a grant: a newcomer must not take it
    newcomer = add_job(deps)
    assert submit.run(newcomer, deps).summary == "waiting"
    assert fairshare.grant(deps.settings, deps.app, deps.limiter, always=True) == 1
    assert _granted(app) == [str(first)]  # the job that waited longest
    assert submit.run(first, deps).summary.startswith("at_fal:")
    assert job(deps, newcomer)["status"] is JobStatus.WAITING


def test_a_park_grants_only_when_it_set_the_flag_itself(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=1)
    assert deps.limiter.try_acquire("another-job")
    first = add_job(deps)
    assert submit.run(first, deps).summary == "waiting"
    deps.limiter.release("another-job")  # freed without a grant
    assert submit.run(add_job(deps), deps).summary == "waiting"  # the flag was set: no grant
    assert _granted(app) == []
    deps.limiter.clear_waiting()  # the flag lapsed: the next park sets it, and grants
    assert fairshare.waiting(deps.settings, deps.app, deps.limiter) == 1
    assert _granted(app) == [str(first)]


def test_with_nobody_waiting_the_flag_goes_and_submits_take_free_slots_directly(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=2)
    deps.limiter.mark_waiting(60)
    assert fairshare.grant(deps.settings, deps.app, deps.limiter) == 0
    assert not deps.limiter.anyone_waiting()
    assert submit.run(add_job(deps), deps).summary.startswith("at_fal:")


def test_a_slot_kept_for_a_submit_that_never_ran_expires_and_goes_to_the_next(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=1)
    deps.limiter = FalLimiter(None, limit=1, lease_s=0.2)
    tenant = _tenant(deps, "a")
    first, second = _jobs(deps, tenant, 2, JobStatus.WAITING)
    assert fairshare.grant(deps.settings, deps.app, deps.limiter, always=True) == 1
    assert _granted(app) == [str(first)]  # ... and its worker dies before the submit runs
    time.sleep(0.3)
    assert fairshare.grant(deps.settings, deps.app, deps.limiter, always=True) == 1
    assert _granted(app) == [str(first), str(second)]


def test_a_waiting_job_can_be_cancelled_and_expires_at_its_deadline(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=1)
    tenant = _tenant(deps, "a")
    cancelled, late = _jobs(deps, tenant, 2, JobStatus.WAITING)
    database_url = deps.settings.database_url
    assert write(database_url, lambda db: state.move(db, cancelled, "cancel")) is not None
    past = utcnow() - timedelta(seconds=1)
    query = state.JOBS.update().where(state.JOBS.c.id == late).values(deadline_at=past)
    write(database_url, lambda db: db.execute(query))
    expired = write(database_url, lambda db: due.expire_queued(db, utcnow()))
    assert [m.job.id for m in expired] == [late]
    assert job(deps, late)["status"] is JobStatus.FAILED
    assert fairshare.grant(deps.settings, deps.app, deps.limiter, always=True) == 0
    assert not deps.limiter.anyone_waiting()
