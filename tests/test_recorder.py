"""A saturated worker hands the end of its runs to recorder threads (``worker.recorder``).

With one thread and Celery's prefetch of 2, a second message always waits while a run
polls: each run that hears COMPLETED gives its thread to it, and a recorder thread reads
the result, checks the images and writes the row. Every outcome must come out exactly as
when the run records it itself (``tests/test_pipeline.py``), retries included.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celery.worker import state as worker_state
from conftest import Stack, unique

from worker.pipeline import Done, Gauge
from worker.recorder import RecorderThreads, threads_held_by_generations


@pytest.mark.slow
def test_saturated_worker_records_every_outcome_on_its_recorder_threads(stack: Stack) -> None:
    stack.start_worker("--concurrency", "1")
    prompts = {
        "ok": unique("a lighthouse at dawn"),
        "late-refusal": unique("[[fal:late-refuse:violence]] a duel"),
        "resubmitted": unique("[[fal:runner-disconnected,ok]] a flaky runner"),
        "url-404": unique("[[fal:url-404]] a vanished file"),
        "ok-again": unique("a quiet harbour"),
    }
    ids = {name: stack.enqueue(prompt) for name, prompt in prompts.items()}
    jobs = {name: stack.wait_terminal(job_id, timeout_s=60) for name, job_id in ids.items()}

    for name in ("ok", "ok-again"):
        assert jobs[name]["status"] == "succeeded", jobs[name]
        assert jobs[name]["images"] and jobs[name]["attempts"] == 1, jobs[name]
    refused = jobs["late-refusal"]
    assert (refused["status"], refused["refusal_category"]) == ("refused", "violence"), refused
    assert refused["attempts"] == 1, "a refusal is never retried"
    # a request fal completed with a retryable error: the recorder schedules the next run,
    # which submits once more (counted)
    resubmitted = jobs["resubmitted"]
    assert (resubmitted["status"], resubmitted["attempts"]) == ("succeeded", 2), resubmitted
    assert resubmitted["attempt_log"][0]["error_type"] == "runner_disconnected"
    assert jobs["url-404"]["status"] == "failed" and "404" in jobs["url-404"]["error"]

    submissions = stack.emulator.stats()["submissions_by_prompt"]
    assert [submissions[p] for p in prompts.values()] == [1, 1, 2, 1, 1]
    handed = stack.logs().count("job.handed_to_recorder")
    assert handed >= 3, f"runs were not handed to the recorder ({handed})\n{stack.logs()}"


@pytest.mark.slow
def test_a_worker_with_threads_to_spare_records_its_own_outcomes(running: Stack) -> None:
    """Not saturated (8 threads, one job): the run records, and Flower sees the outcome."""
    job = running.wait_terminal(running.enqueue(unique("a single fox")))
    assert job["status"] == "succeeded", job
    assert "job.handed_to_recorder" not in running.logs()


def _recorder(threads: int, **options: Any) -> RecorderThreads:
    """Recorder threads whose follow-up (Flower, retries, callbacks) does nothing."""
    return RecorderThreads(threads, follow_up=lambda *_: None, **options)


class _KilledAfterTheHandOver:
    """A recorder whose process dies before it records anything (SIGKILL after the hand-over)."""

    def __init__(self) -> None:
        self.dropped: list[uuid.UUID] = []

    def wanted(self) -> bool:
        return True

    def take(self, job_id: uuid.UUID, finish: Callable[[], Any], **_: Any) -> None:
        self.dropped.append(job_id)


@pytest.mark.slow
def test_a_worker_killed_after_the_hand_over_is_resumed_by_request_id(stack: Stack) -> None:
    """The message was acked with the hand-over; the lease and the sweeper carry the job."""
    from worker.account import AccountGuard
    from worker.db import session_scope
    from worker.fal_gateway import GatewayPool
    from worker.fleet import FalLimiter
    from worker.pipeline import Done, Runtime, run_job
    from worker.queries import get_job, job_to_dict
    from worker.retry import RetryPolicy
    from worker.sweeper import sweep

    lease = {"IMAGEGEN_LEASE_S": "1.5"}
    stack.env.update(lease)
    settings = stack.settings()
    recorder = _KilledAfterTheHandOver()
    rt = Runtime(
        settings=settings,
        gateway=GatewayPool(settings),
        policy=RetryPolicy.from_settings(settings),
        guard=AccountGuard.for_url(stack.redis_url, settings.account_lock_ttl_s),
        limiter=FalLimiter.for_url(stack.redis_url, limit=None, lease_s=settings.lease_s),
        recorder=recorder,
    )
    prompt = unique("a lighthouse, recorded by nobody")
    job_id = stack.enqueue(prompt)
    assert run_job(job_id, rt) == Done("recording")
    assert recorder.dropped == [job_id]

    def row() -> dict[str, Any]:
        with session_scope(stack.database_url) as session:
            return job_to_dict(get_job(session=session, job_id=job_id), with_attempts=True)

    orphan = row()
    assert orphan["status"] == "running" and orphan["fal_request_id"], orphan

    stack.start_worker()  # it gets the enqueued message: the lease still holds, so it skips
    deadline = time.monotonic() + 60
    while row()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, row()
        sweep(settings, stack.app())  # celery beat's job: republish once the lease ran out
        time.sleep(0.5)
    job = row()
    assert job["status"] == "succeeded" and job["images"], job
    assert job["attempts"] == 1
    assert job["fal_request_id"] == orphan["fal_request_id"]
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1


def test_a_run_is_never_queued_behind_busy_recorder_threads() -> None:
    """Recording waits on fal's round trips (result, image check): with every recorder thread
    busy and no room to wait, a run records itself instead of waiting in line for one
    (unit test, no Celery)."""
    waiting = [True]  # a task message waits for a thread
    recorder, release = _recorder(1, busy=lambda: waiting[0]), threading.Event()
    recorded: list[uuid.UUID] = []

    def finish(job_id: uuid.UUID) -> Callable[[], Done]:
        def run() -> Done:
            release.wait(10)
            recorded.append(job_id)
            return Done("succeeded")

        return run

    first, second = uuid.uuid4(), uuid.uuid4()
    assert recorder.wanted()
    recorder.take(first, finish(first), callback_url=None, task_retries=0)
    assert not recorder.wanted(), "the only recorder thread is busy: record it yourself"
    release.set()
    deadline = time.monotonic() + 10
    while not recorder.wanted():  # free again once the first run is recorded
        assert time.monotonic() < deadline
        time.sleep(0.01)
    recorder.take(second, finish(second), callback_url=None, task_retries=0)
    recorder.shutdown()
    assert recorded == [first, second]
    waiting[0] = False  # nothing waits for a thread: nothing to hand over
    assert not _recorder(1, busy=lambda: waiting[0]).wanted()


def test_recording_waits_while_task_messages_wait_at_most_defer_s() -> None:
    """While messages wait for a thread their submits go first: a handed-over run is
    recorded once none waits, or ``defer_s`` after it was handed over, whichever is first;
    up to ``queue`` runs wait for the recorder's threads."""
    waiting = [True]
    recorder = _recorder(2, queue=4, defer_s=30.0, busy=lambda: waiting[0])
    recorded: dict[uuid.UUID, float] = {}

    def finish(job_id: uuid.UUID) -> Callable[[], Done]:
        def run() -> Done:
            recorded[job_id] = time.monotonic()
            return Done("succeeded")

        return run

    jobs = [uuid.uuid4() for _ in range(4)]
    for job_id in jobs:
        assert recorder.wanted()
        recorder.take(job_id, finish(job_id), callback_url=None, task_retries=0)
    assert not recorder.wanted(), "four runs wait already: the fifth records itself"
    time.sleep(0.6)
    assert recorded == {}, "deferred while messages wait"
    opened = time.monotonic()
    waiting[0] = False
    deadline = opened + 10
    while len(recorded) < 4:
        assert time.monotonic() < deadline, recorded
        time.sleep(0.01)
    assert all(at >= opened for at in recorded.values())
    recorder.shutdown()

    waiting[0] = True  # messages wait for good: recorded defer_s after the hand-over
    capped = _recorder(1, queue=1, defer_s=0.5, busy=lambda: waiting[0])
    late: dict[uuid.UUID, float] = {}
    job_id = uuid.uuid4()
    assert capped.wanted()
    handed = time.monotonic()

    def record_late() -> Done:
        late[job_id] = time.monotonic()
        return Done("succeeded")

    capped.take(job_id, record_late, callback_url=None, task_retries=0)
    capped.shutdown()  # a warm shutdown records at once, deferred or not
    assert late and late[job_id] - handed < 0.5


def test_a_run_hands_over_only_while_generations_hold_the_threads(monkeypatch: Any) -> None:
    """With fal's generations as short as their bookkeeping (no latency), runs are busy with
    that bookkeeping, not waiting on fal: handing it over would only add to it."""
    generating = Gauge()
    busy = threads_held_by_generations(generating)
    monkeypatch.setattr(worker_state, "reserved_requests", set(range(12)))  # 4 wait
    monkeypatch.setattr(worker_state, "active_requests", set(range(8)))
    assert not busy(), "no run waits on fal (but the one asking)"
    with generating:
        assert busy(), "a quarter of the runs waited on fal and messages wait for a thread"
        monkeypatch.setattr(worker_state, "reserved_requests", set(range(8)))
        assert not busy(), "no message waits for a thread"
    assert generating.value == 0
