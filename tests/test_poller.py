"""The poller: its learned schedule (pure), and the real thing against Postgres, Redis and
the HTTPS fal emulator (requests created there with the real gateway, rows at_fal)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from imagegen.worker.constants import CALLBACK_QUEUE
from imagegen.worker.fal.schedule import COLD_WAIT, MIN_SAMPLES, PROBE_AT, PROBE_EVERY, Schedule
from tests.conftest import Stack, add_jobs, unique

MODEL = "openai/gpt-image-2"


def _schedule() -> Schedule:
    return Schedule(initial_s=1.0, max_s=5.0, factor=1.5)


def _learn(schedule: Schedule, latency_s: float, count: int = 20) -> None:
    for _ in range(count):
        job_id = uuid.uuid4()
        schedule.completed(MODEL, job_id, latency_s)


# -- the schedule ---------------------------------------------------------------------------


def test_unlearned_checks_start_at_the_initial_delay_and_grow_by_the_factor() -> None:
    schedule = _schedule()
    scout = uuid.UUID(int=PROBE_EVERY * 12345)  # one request in PROBE_EVERY scouts
    other = uuid.UUID(int=PROBE_EVERY * 12345 + 1)
    assert schedule.first_check_delay_s(MODEL) == 1.0
    assert schedule.plan(MODEL, scout, 1.0) is None  # nothing learned: check when due
    gaps = {}
    for job in (scout, other):
        times = [1.0]
        for _ in range(8):
            times.append(schedule.next_check_s(MODEL, job, times[-1]))
        gaps[job] = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps[scout][:4] == [1.0, 1.0, 1.5, 2.25]  # at least the initial delay, then x1.5
    assert gaps[scout][-1] == 5.0  # capped at IMAGEGEN_POLL_MAX_S
    assert gaps[other][0] == COLD_WAIT * 1.0  # the others wait longer until it is learned
    assert max(gaps[other]) == COLD_WAIT * 5.0


def test_learned_first_check_is_a_high_quantile_then_short_steps() -> None:
    schedule = _schedule()
    _learn(schedule, 40.0, count=MIN_SAMPLES - 1)
    assert not schedule.learned(MODEL)
    for latency in (50.0, 60.0, 60.0, 60.0, 61.0, 62.0, 64.0, 70.0, 90.0, 100.0):
        schedule.completed(MODEL, uuid.uuid4(), latency)
    assert schedule.learned(MODEL)
    first = schedule.first_check_delay_s(MODEL)
    assert 62.0 <= first <= 90.0
    job = uuid.uuid4()
    while job.int % 8 == 0:  # not a probe
        job = uuid.uuid4()
    # the submit stage's early check is re-planned to the learned point, without a call
    assert schedule.plan(MODEL, job, 1.0) == first
    assert schedule.plan(MODEL, job, first) is None
    step = schedule.next_check_s(MODEL, job, first) - first
    assert 1.0 <= step <= 5.0
    # a check planned before the model was learned, not done: straight to the learned point
    assert schedule.next_check_s(MODEL, job, 10.0) == first


def test_probes_bring_the_first_check_down_when_requests_get_faster() -> None:
    schedule = _schedule()
    _learn(schedule, 60.0, count=50)
    before = schedule.first_check_delay_s(MODEL)
    probes = 0
    while probes < 8:
        job = uuid.uuid4()
        at = schedule.plan(MODEL, job, 1.0)
        if job.int % 8 == 0:
            assert at is not None
            assert at == pytest.approx(before * PROBE_AT)
            schedule.completed(MODEL, job, at)  # done already at the probe's early check
            probes += 1
    assert schedule.first_check_delay_s(MODEL) == pytest.approx(before * PROBE_AT, rel=0.02)


def _simulate(schedule: Schedule, jobs: int, latency: Callable[[], float]) -> list[int]:
    """Status calls per job, each job through the schedule as the poller drives it."""
    calls = []
    for _ in range(jobs):
        job, latency_s, planned, n = uuid.uuid4(), latency(), schedule.initial_s, 0
        while True:
            later = schedule.plan(MODEL, job, planned)
            if later is not None:
                planned = later
                continue
            n += 1
            if latency_s <= planned:
                schedule.completed(MODEL, job, planned)
                break
            planned = schedule.next_check_s(MODEL, job, planned)
        calls.append(n)
    return calls


def test_steady_latency_costs_at_most_one_and_a_half_status_calls_a_job() -> None:
    rng = random.Random(22)
    schedule = _schedule()
    calls = _simulate(schedule, 2000, lambda: rng.uniform(55.0, 70.0))
    steady = calls[500:]
    assert sum(steady) / len(steady) <= 1.5
    assert sum(calls[:20]) / 20 > 2  # before anything was learned: the growing steps
    assert sum(calls) / len(calls) <= 1.6  # the first wave's scouts do not cost the run


def test_a_latency_that_drops_is_followed() -> None:
    rng = random.Random(7)
    schedule = _schedule()
    _simulate(schedule, 500, lambda: rng.uniform(55.0, 70.0))
    _simulate(schedule, 1500, lambda: rng.uniform(25.0, 35.0))
    assert schedule.first_check_delay_s(MODEL) < 45.0


# -- against the emulator -------------------------------------------------------------------


class _NoHooks:
    def sending(self) -> None:
        pass

    def not_sent(self) -> None:
        pass


def _at_fal(
    stack: Stack, count: int, latency_s: float, step: str = "ok", **values: Any
) -> dict[uuid.UUID, str]:
    """``count`` requests created at the emulator and their job rows at_fal, due now."""
    from imagegen.models import JobStatus, utcnow
    from imagegen.worker.fal.gateway import FalGateway

    gateway = FalGateway.from_settings(stack.settings())
    jobs = {}
    try:
        for _ in range(count):
            prompt = unique(f"a fox [[fal:{step}+latency:{latency_s}]]")
            rid = gateway.submit(MODEL, {"prompt": prompt}, _NoHooks())
            now = utcnow()
            row = {"submitted_at": now, "poll_at": now + timedelta(seconds=0.1), **values}
            (job_id,) = add_jobs(
                stack.database_url,
                1,
                JobStatus.AT_FAL,
                fal_request_id=rid,
                lease_until=None,
                **row,
            )
            jobs[job_id] = rid
    finally:
        gateway.close()
    return jobs


def _statuses(stack: Stack, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    from sqlalchemy import select

    from imagegen.worker.db import get_engine
    from imagegen.worker.fal.due import JOBS

    with get_engine(stack.database_url).connect() as db:
        rows = db.execute(select(JOBS.c.id, JOBS.c.status, JOBS.c.error).where(JOBS.c.id.in_(ids)))
        return {row.id: row for row in rows}


def _all(stack: Stack, ids: list[uuid.UUID], status: str) -> Callable[[], bool]:
    return lambda: all(r.status.value == status for r in _statuses(stack, ids).values())


def _poller(stack: Stack, concurrency: int = 64, **overrides: Any) -> Any:
    from imagegen.worker.fal.limits import FalLimiter
    from imagegen.worker.fal.poller import Poller

    settings = stack.settings(**overrides)
    limiter = FalLimiter.for_settings(settings)
    return Poller(settings, app=stack.app(), limiter=limiter, concurrency=concurrency)


async def _run(pollers: list[Any], until: Callable[[], bool], timeout_s: float = 20) -> float:
    """Run the pollers until ``until()`` holds; the seconds that took."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
    start = time.monotonic()
    try:
        while not await asyncio.to_thread(until):
            assert time.monotonic() - start < timeout_s, "the pollers did not get there"
            await asyncio.sleep(0.05)
        return time.monotonic() - start
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def _collect_messages(stack: Stack) -> Counter[str]:
    """Collect task messages in the leased Redis db's imagegen.next queue, by job id."""
    import redis

    from imagegen.worker.constants import COLLECT_TASK, NEXT_QUEUE

    with redis.Redis.from_url(stack.redis_url) as client:
        messages = [json.loads(m) for m in client.lrange(NEXT_QUEUE, 0, -1)]
    headers = [m["headers"] for m in messages]
    assert all(h["task"] == COLLECT_TASK for h in headers)
    return Counter(h["id"].split("/")[0] for h in headers)


def _queued(stack: Stack, queue: str) -> int:
    import redis

    with redis.Redis.from_url(stack.redis_url) as client:
        return int(client.llen(queue))


def _polls(stack: Stack, rids: list[str]) -> list[int]:
    requests = stack.emulator.stats()["requests"]
    return [requests[rid]["status_polls"] for rid in rids]


@pytest.mark.slow
def test_completed_requests_are_collected_with_few_status_calls(stack: Stack) -> None:
    poller = _poller(stack, IMAGEGEN_POLL_INITIAL_S=0.1, IMAGEGEN_POLL_MAX_S=0.3)

    async def scenario() -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, str]]:
        learn = await asyncio.to_thread(_at_fal, stack, 10, 1.0)
        await _run([poller], _all(stack, list(learn), "collecting"))
        steady = await asyncio.to_thread(_at_fal, stack, 20, 1.0)
        await _run([poller], _all(stack, list(steady), "collecting"))
        return learn, steady

    learn, steady = asyncio.run(scenario())
    jobs = {**learn, **steady}
    assert _collect_messages(stack) == Counter({str(job_id): 1 for job_id in jobs})
    assert sorted(poller.collected) == sorted(jobs)
    polls = _polls(stack, list(steady.values()))
    assert sum(polls) / len(polls) <= 1.5, polls  # the bench's target
    assert sum(_polls(stack, list(learn.values()))) > sum(polls[:10])  # it had to learn


@pytest.mark.slow
def test_a_deadline_at_fal_cancels_and_fails_the_job_within_two_seconds(stack: Stack) -> None:
    from imagegen.models import utcnow
    from imagegen.worker.fal.limits import FalLimiter

    deadline = utcnow() + timedelta(seconds=1.5)
    jobs = _at_fal(stack, 1, 30.0, deadline_at=deadline, callback_url="https://app.example/hook")
    (job_id,), (rid,) = list(jobs), list(jobs.values())
    # checks far apart: the deadline must be what brings the row due, not a routine check
    poller = _poller(
        stack, IMAGEGEN_FAL_CONCURRENCY=5, IMAGEGEN_POLL_INITIAL_S=4, IMAGEGEN_POLL_MAX_S=10
    )
    limiter = FalLimiter.for_settings(stack.settings(IMAGEGEN_FAL_CONCURRENCY=5))
    assert limiter.try_acquire(str(job_id))
    asyncio.run(_run([poller], _all(stack, [job_id], "failed")))
    late_s = (utcnow() - deadline).total_seconds()
    assert late_s < 2.0
    row = _statuses(stack, [job_id])[job_id]
    assert "IMAGEGEN_JOB_DEADLINE_S" in row.error
    assert stack.emulator.stats()["requests"][rid]["cancels"] == 1
    assert limiter.in_flight() == 0  # its fleet slot given back
    assert _queued(stack, CALLBACK_QUEUE) == 1  # its web app is told


@pytest.mark.slow
def test_a_request_still_running_keeps_its_slot_and_comes_due_again(stack: Stack) -> None:
    from sqlalchemy import select

    from imagegen.worker.db import get_engine
    from imagegen.worker.fal.due import JOBS
    from imagegen.worker.fal.limits import FalLimiter

    settings = {"IMAGEGEN_FAL_CONCURRENCY": 5, "IMAGEGEN_LEASE_S": 2}
    jobs = _at_fal(stack, 1, 30.0)
    (job_id,) = list(jobs)
    limiter = FalLimiter.for_settings(stack.settings(**settings))
    assert limiter.try_acquire(str(job_id), lease_s=1.0)
    poller = _poller(stack, **settings)
    started = time.monotonic()
    asyncio.run(_run([poller], lambda: time.monotonic() - started > 2.5))
    assert limiter.in_flight() == 1  # renewed past its 1 s lease
    with get_engine(stack.database_url).connect() as db:
        row = db.execute(select(JOBS.c.status, JOBS.c.poll_at).where(JOBS.c.id == job_id)).one()
    assert row.status.value == "at_fal"
    assert row.poll_at is not None
    assert poller.counts["waiting"] >= 2


class _Watched:
    """fal's status calls, slowed down (longer than a tick), shared by several pollers:
    records each request checked while a check of it was still under way."""

    def __init__(self, inner: Any, busy: Counter[str], twice: list[str]) -> None:
        self.inner, self.busy, self.twice = inner, busy, twice

    async def status(self, application: str, request_id: str) -> Any:
        if self.busy[request_id]:
            self.twice.append(request_id)
        self.busy[request_id] += 1
        try:
            await asyncio.sleep(0.4)
            return await self.inner.status(application, request_id)
        finally:
            self.busy[request_id] -= 1

    async def cancel(self, application: str, request_id: str) -> None:
        await self.inner.cancel(application, request_id)

    async def aclose(self) -> None:
        from imagegen.worker.fal.poller import close_fal

        await close_fal(self.inner)


@pytest.mark.slow
def test_two_pollers_collect_every_job_exactly_once(stack: Stack) -> None:
    jobs = _at_fal(stack, 40, 0.5)
    pollers = [_poller(stack, concurrency=8), _poller(stack, concurrency=8)]  # 16 rows a claim
    busy: Counter[str] = Counter()
    twice: list[str] = []
    for poller in pollers:
        poller.fal = _Watched(poller.fal, busy, twice)
    asyncio.run(_run(pollers, _all(stack, list(jobs), "collecting")))
    collected = pollers[0].collected + pollers[1].collected
    assert sorted(collected) == sorted(jobs)  # heard_completed won once per job
    assert _collect_messages(stack) == Counter({str(job_id): 1 for job_id in jobs})
    assert all(p.collected for p in pollers), "one poller did all the work"
    assert twice == []  # a claimed row is nobody else's until its claim window ends


@pytest.mark.slow
def test_a_dead_pollers_rows_come_due_after_its_claim_window(stack: Stack) -> None:
    from imagegen.worker.fal.poller import Poller

    jobs = _at_fal(stack, 5, 0.2)
    dead = _poller(stack)
    dead.fal = _Hangs()  # claims the rows, then never answers (killed mid-check)

    dead.claim_s = 3.0

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(dead.run(stop))
        await asyncio.sleep(0.5)
        task.cancel()  # no drain, no flush: as if SIGKILLed
        heir: Poller = _poller(stack)
        took = await _run([heir], _all(stack, list(jobs), "collecting"))
        assert took > 1.5  # only once the dead one's claim ran out
        assert sorted(heir.collected) == sorted(jobs)

    asyncio.run(scenario())


def test_a_status_answer_that_makes_no_sense_fails_the_job(stack: Stack) -> None:
    jobs = _at_fal(stack, 1, 0.1, step="status-unknown")
    (job_id,) = list(jobs)
    asyncio.run(_run([_poller(stack)], _all(stack, [job_id], "failed"), timeout_s=3))
    error = _statuses(stack, [job_id])[job_id].error
    assert "malformed" in error and "EXPLODED" in error


class _Hangs:
    async def status(self, application: str, request_id: str) -> Any:
        await asyncio.sleep(3600)

    async def cancel(self, application: str, request_id: str) -> None:
        await asyncio.sleep(3600)


def test_queued_jobs_past_their_deadline_are_failed(stack: Stack) -> None:
    from imagegen.models import JobStatus, utcnow

    past = utcnow() - timedelta(seconds=1)
    expired = add_jobs(stack.database_url, 2, JobStatus.QUEUED, deadline_at=past, lease_until=None)
    later = utcnow() + timedelta(hours=1)
    kept = add_jobs(stack.database_url, 1, JobStatus.QUEUED, deadline_at=later, lease_until=None)
    asyncio.run(_run([_poller(stack)], _all(stack, expired, "failed"), timeout_s=3))
    assert _statuses(stack, kept)[kept[0]].status.value == "queued"
    assert all("deadline" in r.error for r in _statuses(stack, expired).values())


# -- the process ----------------------------------------------------------------------------


def _start_process(stack: Stack) -> tuple[Any, Any]:
    import os
    import subprocess

    from imagegen.worker.cli.demo import poller_argv
    from tests.conftest import ROOT

    log = stack.log_dir / f"poller-{uuid.uuid4().hex[:6]}.log"
    env = {**os.environ, **stack.env}
    with log.open("wb") as out:
        proc = subprocess.Popen(poller_argv(), cwd=ROOT, env=env, stdout=out, stderr=out)
    stack.workers.append(proc)  # stopped after the test, whatever it asserted
    deadline = time.monotonic() + 30
    while b"poller.ready" not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc, log


@pytest.mark.slow
def test_the_poller_process_collects_and_stops_gracefully_on_sigterm(stack: Stack) -> None:
    import signal

    proc, log = _start_process(stack)
    ready = next(line for line in log.read_text().splitlines() if "poller.ready" in line)
    assert "mode=poll" in ready and "concurrency=64" in ready and "hostname=" in ready
    jobs = _at_fal(stack, 3, 0.3)
    deadline = time.monotonic() + 15
    expected = Counter({str(job_id): 1 for job_id in jobs})
    while not _all(stack, list(jobs), "collecting")() or _collect_messages(stack) != expected:
        assert time.monotonic() < deadline, log.read_text()  # (each published after its move)
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert "poller.stopped" in log.read_text()


@pytest.mark.slow
def test_a_second_signal_stops_the_poller_at_once(stack: Stack) -> None:
    import signal

    proc, _ = _start_process(stack)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 130


@pytest.mark.slow
def test_a_stop_does_not_wait_out_a_database_outage(stack: Stack) -> None:
    from imagegen.worker.db import dispose_engines

    poller = _poller(stack, DATABASE_URL=stack.database_url.rsplit("/", 1)[0] + "/no_such_db")

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        await asyncio.sleep(1.0)  # its ticks fail: the database is not there
        stop.set()
        started = time.monotonic()
        await task
        return time.monotonic() - started

    try:
        assert asyncio.run(scenario()) < 2.0
    finally:
        dispose_engines()


def test_a_request_past_the_generation_timeout_is_given_up() -> None:
    from datetime import timedelta

    from imagegen.models import utcnow
    from imagegen.worker.fal.due import DEADLINE_ERROR, Due

    now = utcnow()
    row = Due(uuid.uuid4(), "m", "r", now - timedelta(seconds=50), None, 1, now)
    assert row.give_up(now, generation_timeout_s=60) is None
    assert "IMAGEGEN_GENERATION_TIMEOUT_S" in (row.give_up(now, generation_timeout_s=40) or "")
    late = Due(uuid.uuid4(), "m", "r", now, now - timedelta(seconds=1), 1, now)
    assert late.give_up(now, generation_timeout_s=60) == DEADLINE_ERROR


@pytest.mark.slow
def test_the_poller_republishes_a_lost_queued_message_without_the_sweeper(running: Stack) -> None:
    """A queued row whose message is gone (its worker was killed holding it) past its grace:
    the poller's housekeeping publishes it again within seconds; no beat runs here."""
    from datetime import timedelta

    from imagegen.models import JobStatus, utcnow
    from tests.conftest import add_jobs

    [job_id] = add_jobs(
        running.database_url, 1, JobStatus.QUEUED, lease_until=utcnow() - timedelta(seconds=1)
    )
    assert running.wait_terminal(job_id, timeout_s=30)["status"] == "succeeded"
