"""What Flower shows for each way a job ends, against a real Flower (``worker.task_states``).

A failed job's last stage task is FAILURE with the reason, a cancelled one REVOKED, a success
after a retry shows no exception, a duplicate message for a finished job leaves the state to
the run that recorded it, and a backlog on a small worker shows every job's outcome.
"""

from __future__ import annotations

import re
import time
import uuid
from functools import partial
from typing import Any

import pytest

from imagegen.worker.constants import COLLECT_TASK, STORE_TASK, SUBMIT_TASK
from tests.conftest import Stack, unique
from tests.test_flower import (
    WAIT_S,
    Flower,
    _outcome_task,
    _sees_a_worker,
    _task_in_state,
    flower,
    start_flower,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
__all__ = ["flower"]  # the fixture, used by name


def _listed_in_state(flower: Flower, state: str, task_id: str) -> dict[str, Any] | None:
    """The task as Flower's state filter (the UI's and the API's) lists it."""
    tasks: dict[str, dict[str, Any]] = flower.api("/api/tasks", state=state, limit=100)
    return tasks.get(task_id)


def _counted(flower: Flower, event_type: str) -> float:
    """Flower's Prometheus count of stage-task events of this type (all workers)."""
    tasks = (f'task="{SUBMIT_TASK}"', f'task="{COLLECT_TASK}"', f'task="{STORE_TASK}"')
    lines = flower.get("/metrics", auth=False).text.splitlines()
    counts = [line for line in lines if line.startswith("flower_events_total{")]
    ours = [c for c in counts if f'type="{event_type}"' in c and any(t in c for t in tasks)]
    return sum(float(c.rsplit(" ", 1)[1]) for c in ours)


def _cancel_once_submitted(stack: Stack, job_id: uuid.UUID) -> None:
    from imagegen.worker.db import session_scope
    from imagegen.worker.jobs.cancel import cancel
    from imagegen.worker.jobs.queries import get_job

    deadline = time.monotonic() + WAIT_S
    while True:
        with session_scope(stack.database_url) as session:
            if get_job(session=session, job_id=job_id).fal_request_id is not None:
                break
        assert time.monotonic() < deadline, "the job was never submitted"
        time.sleep(0.05)
    assert cancel(job_id, settings=stack.settings(), app=stack.app()) == "cancelled"


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

    # fal rejects the key at submit: the job id's own task fails, saying why
    failed = flower.wait_for("the failed job's outcome", partial(_outcome_task, flower, failed_id))
    assert (failed["uuid"], failed["state"]) == (str(failed_id), "FAILURE"), failed
    assert "JobFailed" in failed["exception"] and "FAL_KEY" in failed["exception"], failed
    listed = flower.wait_for(
        "the failed job under FAILURE", partial(_listed_in_state, flower, "FAILURE", str(failed_id))
    )
    assert listed["exception"] == failed["exception"], listed
    # cancelled while at fal: the collect the cancel publishes finds it so
    revoked = flower.wait_for(
        "the cancelled job's outcome", partial(_outcome_task, flower, cancelled_id)
    )
    assert (revoked["uuid"], revoked["state"]) == (f"{cancelled_id}/collect-1", "REVOKED")
    flower.wait_for(
        "the cancelled job under REVOKED",
        partial(_listed_in_state, flower, "REVOKED", revoked["uuid"]),
    )
    retried = flower.wait_for(
        "the retried job's outcome", partial(_outcome_task, flower, retried_id)
    )
    assert (retried["state"], retried["result"]) == ("SUCCESS", repr("succeeded")), retried
    submitted = _task_in_state(flower, str(retried_id), "SUCCESS")  # the 503 was at submit
    assert submitted is not None and submitted["retries"] == 1, submitted
    assert "at_fal:" in submitted["result"], submitted
    for task in (submitted, retried):
        assert task["exception"] is None and task["traceback"] is None, (
            f"a leftover exception from the retry on a task that succeeded: {task}"
        )
    assert _counted(flower, "task-failed") >= 1 and _counted(flower, "task-revoked") >= 1
    assert _counted(flower, "task-retried") >= 1
    worker_log = (stack.log_dir / "worker-0.log").read_text()
    assert "Traceback" not in worker_log, worker_log
    assert "raised expected: JobFailed" in worker_log, "Celery's one line for the failure"

    # A message delivered again for the finished job (a broker reconnect restores unacked
    # ones, the sweeper republishes): the run finds nothing to do, and must not turn the
    # task SUCCESS ('skipped') over the job's FAILURE.
    stack.app().send_task(SUBMIT_TASK, args=[str(failed_id)], task_id=str(failed_id))
    flower.wait_for(
        "the duplicate run started",
        lambda: _started_again(flower, str(failed_id), failed["started"]),
    )
    done = re.compile(rf"Task {re.escape(SUBMIT_TASK)}\[{failed_id}\] (ignored|succeeded)")
    flower.wait_for("the duplicate run's end", lambda: done.search(stack.logs()))
    time.sleep(1.0)  # a terminal event would have reached Flower by now (0.1 s windows)
    again = flower.api(f"/api/task/info/{failed_id}")
    assert again["state"] == "FAILURE" and "JobFailed" in again["exception"], again


def _started_again(flower: Flower, task_id: str, before: float) -> bool | None:
    info = flower.api(f"/api/task/info/{task_id}")
    return True if (info.get("started") or 0) > before else None


#: a backlog's kinds of job: prompt, the row's status, Flower's state and result (a regex)
_BACKLOG = {
    "ok": ("[[fal:ok+latency:2]] a slow lighthouse", "succeeded", "SUCCESS", "'succeeded'"),
    "refused": ("[[fal:late-refuse:violence]] a duel", "refused", "SUCCESS", "'refused:violence'"),
    "failed": ("[[fal:no-images]] an empty answer", "failed", "FAILURE", None),
    "unstored": (
        "[[fal:url-404]] a vanished file",
        "succeeded",
        "SUCCESS",
        "'succeeded:images_not_stored'",
    ),
    "retried": ("[[fal:runner-disconnected,ok]] a flaky runner", "succeeded", "SUCCESS", None),
}


@pytest.mark.timeout(240)
def test_flower_shows_every_outcome_of_a_backlog(stack: Stack) -> None:
    """25 slow, late-refused, failing, unstored and resubmitted jobs on a worker with two threads:
    Flower shows each job's outcome (none missing, none a stage's interim result)."""
    flower = start_flower(stack)
    try:
        stack.start_worker("--concurrency", "2")
        flower.wait_for("the worker's heartbeat events", lambda: _sees_a_worker(flower))
        kinds = [name for _ in range(5) for name in _BACKLOG]
        ids = [(name, stack.enqueue(unique(_BACKLOG[name][0]))) for name in kinds]
        for name, job_id in ids:
            row = stack.wait_terminal(job_id, timeout_s=120)
            assert row["status"] == _BACKLOG[name][1], row
        for name, job_id in ids:
            _, _, state, result = _BACKLOG[name]
            task = flower.wait_for(
                f"the {name} job's outcome", partial(_outcome_task, flower, job_id)
            )
            assert task["state"] == state, task
            if result is not None:
                assert task["result"] == result, task
            if state == "SUCCESS":
                # a refusal in fal's answer ends at the collect, a success at the store
                assert task["name"] in (COLLECT_TASK, STORE_TASK), task
                assert task["exception"] is None, task
            else:
                assert "JobFailed" in task["exception"], task
        resubmitted = [job_id for name, job_id in ids if name == "retried"]
        for job_id in resubmitted:  # fal's runner failed the first request: a second one
            last = _outcome_task(flower, job_id)
            assert last is not None and last["uuid"] == f"{job_id}/store-2", last
    finally:
        flower.stop()
        print(flower.diagnostics())
