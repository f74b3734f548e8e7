"""What Flower shows for each way a job ends, against a real Flower (``worker.task_states``).

A failed job's task is FAILURE with the reason, a cancelled one REVOKED, a success after a
retry shows no exception, and a run that ends without its job's outcome (handed to a
recorder thread, a duplicate message) leaves the state to the run that records it.
"""

from __future__ import annotations

import re
import time
import uuid
from functools import partial
from typing import Any

import pytest

from tests.conftest import Stack, unique
from tests.test_flower import (
    WAIT_S,
    Flower,
    _sees_a_worker,
    _task_in_state,
    flower,
    start_flower,
)
from worker.constants import RUN_JOB_TASK

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
__all__ = ["flower"]  # the fixture, used by name


def _listed_in_state(flower: Flower, state: str, task_id: str) -> dict[str, Any] | None:
    """The task as Flower's state filter (the UI's and the API's) lists it."""
    tasks: dict[str, dict[str, Any]] = flower.api("/api/tasks", state=state, limit=100)
    return tasks.get(task_id)


def _counted(flower: Flower, event_type: str) -> float:
    """Flower's Prometheus count of run_job events of this type (all workers)."""
    labels = (f'task="{RUN_JOB_TASK}"', f'type="{event_type}"')
    lines = flower.get("/metrics", auth=False).text.splitlines()
    counts = [line for line in lines if line.startswith("flower_events_total{")]
    return sum(float(c.rsplit(" ", 1)[1]) for c in counts if all(lb in c for lb in labels))


def _cancel_once_submitted(stack: Stack, job_id: uuid.UUID) -> None:
    from worker.api import cancel
    from worker.db import session_scope
    from worker.queries import get_job

    deadline = time.monotonic() + WAIT_S
    while True:
        with session_scope(stack.database_url) as session:
            if get_job(session=session, job_id=job_id).fal_request_id is not None:
                break
        assert time.monotonic() < deadline, "the job was never submitted"
        time.sleep(0.05)
    assert cancel(job_id, settings=stack.settings()) == "cancelled"


def test_flower_shows_failure_revoked_and_a_retried_success_truthfully(flower: Flower) -> None:
    """FAILURE with the reason, REVOKED, and a success after a retry shows no exception:
    Flower's state filter and its metrics count them as what the jobs did."""
    stack = flower.stack
    failed_id = stack.enqueue(unique("[[fal:401]] a rejected key"))
    retried_id = stack.enqueue(unique("[[fal:503,ok]] a flaky first try"))
    cancelled_id = stack.enqueue(unique("[[fal:ok+latency:20]] cancelled mid-flight"))
    _cancel_once_submitted(stack, cancelled_id)
    assert stack.wait_terminal(failed_id)["status"] == "failed"
    assert stack.wait_terminal(retried_id)["status"] == "succeeded"

    failed = flower.wait_for(
        "the failed job as FAILURE", partial(_listed_in_state, flower, "FAILURE", str(failed_id))
    )
    assert "JobFailed" in failed["exception"] and "FAL_KEY" in failed["exception"], failed
    revoked = flower.wait_for(
        "the cancelled job as REVOKED",
        partial(_listed_in_state, flower, "REVOKED", str(cancelled_id)),
    )
    assert revoked["uuid"] == str(cancelled_id)
    retried = flower.wait_for(
        "the retried job as SUCCESS", lambda: _task_in_state(flower, str(retried_id), "SUCCESS")
    )
    assert retried["retries"] == 1 and "succeeded" in retried["result"], retried
    assert retried["exception"] is None and retried["traceback"] is None, (
        f"a leftover exception from the retry on a task that succeeded: {retried}"
    )
    assert _counted(flower, "task-failed") >= 1 and _counted(flower, "task-revoked") >= 1
    assert _counted(flower, "task-retried") >= 1
    worker_log = (stack.log_dir / "worker-0.log").read_text()
    assert "Traceback" not in worker_log, worker_log
    assert "raised expected: JobFailed" in worker_log, "Celery's one line for the failure"

    # A message delivered again for the finished job (a broker reconnect restores unacked
    # ones) is skipped: the task must not turn SUCCESS over the job's FAILURE.
    stack.app().send_task(RUN_JOB_TASK, args=[str(failed_id)], task_id=str(failed_id))
    flower.wait_for(
        "the duplicate run started",
        lambda: _started_again(flower, str(failed_id), failed["started"]),
    )
    skipped = re.compile(rf"job\.skipped\b.*\bjob_id={failed_id}")
    flower.wait_for("the duplicate run skipped", lambda: skipped.search(stack.logs()))
    time.sleep(1.0)  # a terminal event would have reached Flower by now (0.1 s windows)
    again = flower.api(f"/api/task/info/{failed_id}")
    assert again["state"] == "FAILURE" and "JobFailed" in again["exception"], again


def _started_again(flower: Flower, task_id: str, before: float) -> bool | None:
    info = flower.api(f"/api/task/info/{task_id}")
    return True if (info.get("started") or 0) > before else None


def test_flower_shows_what_recorder_threads_recorded(stack: Stack) -> None:
    """A saturated worker (one thread) hands runs to recorder threads: Flower shows each
    task's recorded outcome, never 'recording'."""
    flower = start_flower(stack)
    try:
        stack.start_worker("--concurrency", "1")
        flower.wait_for("the worker's heartbeat events", lambda: _sees_a_worker(flower))
        prompts = {
            "ok": unique("a lighthouse at dawn"),
            "refused": unique("[[fal:late-refuse:violence]] a duel"),
            "failed": unique("[[fal:url-404]] a vanished file"),
            "retried": unique("[[fal:runner-disconnected,ok]] a flaky runner"),
            "ok-again": unique("a quiet harbour"),
        }
        ids = {name: stack.enqueue(prompt) for name, prompt in prompts.items()}
        for job_id in ids.values():
            stack.wait_terminal(job_id, timeout_s=60)
        assert "job.handed_to_recorder" in stack.logs(), "no run was handed over"
        states = {"failed": "FAILURE"}
        for name, job_id in ids.items():
            state = states.get(name, "SUCCESS")
            task = flower.wait_for(
                f"the {name} job as {state}",
                lambda job_id=job_id, state=state: _task_in_state(flower, str(job_id), state),
            )
            assert "recording" not in (task.get("result") or ""), task
        refused = _task_in_state(flower, str(ids["refused"]), "SUCCESS")
        assert refused is not None and "refused:violence" in refused["result"], refused
        retried = _task_in_state(flower, str(ids["retried"]), "SUCCESS")
        assert retried is not None and retried["exception"] is None, retried
    finally:
        flower.stop()
        print(flower.diagnostics())
