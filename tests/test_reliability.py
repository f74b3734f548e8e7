"""Faults injected for real: killed workers, lost queues, database drops, 429 storms, cancels."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis

from tests.conftest import Stack, unique

TERMINAL = ("succeeded", "refused", "failed", "cancelled")
pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # every test here runs real processes


def _job(stack: Stack, job_id: uuid.UUID) -> dict[str, Any]:
    from imagegen.worker.db import session_scope
    from imagegen.worker.jobs.queries import get_job, job_to_dict

    with session_scope(stack.database_url) as session:
        return job_to_dict(get_job(session=session, job_id=job_id), with_attempts=True)


def _wait_for(predicate: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _sweep_until_terminal(stack: Stack, ids: list[uuid.UUID], **settings: Any) -> None:
    from imagegen.worker.jobs.sweeper import sweep

    app, conf = stack.app(), stack.settings(**settings)
    deadline = time.monotonic() + 60
    while any(_job(stack, i)["status"] not in TERMINAL for i in ids):
        assert time.monotonic() < deadline, [_job(stack, i) for i in ids]
        sweep(conf, app)
        time.sleep(0.5)


def test_killed_worker_and_poller_resume_by_request_id_without_paying_twice(
    stack: Stack,
) -> None:
    lease = {"IMAGEGEN_LEASE_S": "1.5"}
    stack.env.update(lease)
    stack.start_worker()
    prompt = unique("[[fal:ok+latency:4]] a long generation")
    job_id = stack.enqueue(prompt)
    _wait_for(lambda: _job(stack, job_id)["fal_request_id"] is not None)
    assert stack.poller is not None
    for proc in (stack.workers[0], stack.poller):  # SIGKILL while fal is still generating
        proc.kill()
        proc.wait()
    stack.poller = None
    stack.start_worker()  # and a new poller
    _sweep_until_terminal(stack, [job_id], **lease)
    job = _job(stack, job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1


def test_lost_redis_queue_is_recovered_by_the_sweeper_without_duplicates(stack: Stack) -> None:
    grace = {"IMAGEGEN_QUEUED_GRACE_S": "0"}
    stack.env.update(grace)
    prompts = [unique(f"a lost job {i}") for i in range(5)]
    ids = [stack.enqueue(p) for p in prompts]
    redis.Redis.from_url(stack.redis_url).flushdb()  # Redis restarted without persistence
    stack.start_worker()
    _sweep_until_terminal(stack, ids, **grace)
    from imagegen.worker.jobs.sweeper import sweep

    assert sweep(stack.settings(**grace), stack.app()).republished == []
    counts = stack.emulator.stats()["submissions_by_prompt"]
    assert [counts[p] for p in prompts] == [1] * 5
    assert {_job(stack, i)["status"] for i in ids} == {"succeeded"}


def test_postgres_dropping_connections_mid_task_loses_no_result(stack: Stack) -> None:
    from tests.tcp_proxy import FaultyProxy

    proxy = FaultyProxy("127.0.0.1", 5432)
    proxied = stack.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    stack.start_worker(extra_env={"DATABASE_URL": proxied})
    prompt = unique("[[fal:ok+latency:2]] through a flaky database")
    job_id = stack.enqueue(prompt)
    _wait_for(lambda: _job(stack, job_id)["fal_request_id"] is not None)
    proxy.cut(3)  # every connection dropped, and none accepted for 3 s, while fal finishes
    job = stack.wait_terminal(job_id, timeout_s=60)
    proxy.close()
    assert proxy.drops >= 1
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1
    assert [a["outcome"] for a in job["attempt_log"]] == ["succeeded"]


def test_fleet_wide_cap_means_zero_429s_from_an_account_limit(stack: Stack) -> None:
    stack.emulator.configure(latency_s=0.5, concurrency_limit=3, reject_over_limit=True)
    stack.emulator.reset()
    cap = {"IMAGEGEN_FAL_CONCURRENCY": "3"}
    stack.start_workers(2, extra_env=cap)
    ids = [stack.enqueue(unique(f"capped {i}")) for i in range(12)]
    jobs = [stack.wait_terminal(i, timeout_s=60) for i in ids]
    stats = stack.emulator.stats()
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert stats["rejected_429_total"] == 0
    assert stats["active_peak"] == 3
    assert {j["attempts"] for j in jobs} == {1}


def test_a_429_cools_down_every_worker(stack: Stack) -> None:
    stack.start_workers(2)
    limited = stack.enqueue(unique("[[fal:429:2,ok]] first"))
    _wait_for(lambda: _job(stack, limited)["attempts"] == 1)
    time.sleep(0.3)
    other = stack.enqueue(unique("another prompt"))
    job = stack.wait_terminal(other)
    first = _job(stack, limited)["attempt_log"][0]
    gap = _ts(job["attempt_log"][0]["started_at"]) - _ts(first["finished_at"])
    assert gap >= 1.8, f"a second worker submitted {gap:.2f}s into a 2 s cool-down"
    assert stack.wait_terminal(limited)["status"] == "succeeded"


def test_cancel_a_queued_job_never_reaches_fal(stack: Stack) -> None:
    from imagegen.worker.jobs.cancel import cancel

    prompt = unique("cancel me before any worker")
    job_id = stack.enqueue(prompt)
    assert cancel(job_id, settings=stack.settings()) == "cancelled"
    stack.start_worker()
    time.sleep(1.5)
    job = _job(stack, job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 0
    assert prompt not in stack.emulator.stats()["submissions_by_prompt"]


def test_cancel_a_running_job_cancels_it_at_fal(running: Stack) -> None:
    from imagegen.worker.jobs.cancel import cancel

    job_id = running.enqueue(unique("[[fal:ok+latency:5]] cancel me mid-flight"))
    _wait_for(lambda: _job(running, job_id)["fal_request_id"] is not None)
    asked = time.monotonic()
    assert cancel(job_id, settings=running.settings(), app=running.app()) == "cancelled"
    took_s = time.monotonic() - asked
    request_id = _job(running, job_id)["fal_request_id"]
    # the row and fal's cancel, both before cancel() returns (held-out before: 1.3 s, 3.2 s)
    assert running.emulator.stats()["requests"][request_id]["state"] == "CANCELLED"
    job = _job(running, job_id)
    assert job["status"] == "cancelled" and job["images"] == []
    assert took_s < 1.5, f"cancel took {took_s:.2f} s"


def test_deadline_fails_the_job_with_a_timeout_error_when_it_passes(stack: Stack) -> None:
    """Ended within 2 s of its deadline (the poller checks a request at fal when its
    deadline passes) and cancelled at fal, not when a later check happens to look."""
    # checks 20 s apart: only the deadline brings the check at 2 s
    running = stack
    running.start_worker(extra_env={"IMAGEGEN_POLL_INITIAL_S": "20", "IMAGEGEN_POLL_MAX_S": "20"})
    job_id = running.enqueue(unique("[[fal:ok+latency:60]] too slow"), deadline_s=2)
    job = running.wait_terminal(job_id, timeout_s=60)
    assert job["status"] == "failed"
    assert "deadline" in job["error"]
    late_s = _ts(job["finished_at"]) - _ts(job["created_at"]) - 2
    assert late_s < 2, f"ended {late_s:.1f} s after its deadline"
    request_id = job["fal_request_id"]
    assert running.emulator.stats()["requests"][request_id]["state"] == "CANCELLED"


def test_image_url_that_404s_is_reported_clearly(stack: Stack) -> None:
    """Stored (the default): the copy gives up at once, the job says why; not stored: the
    image check fails the job (IMAGEGEN_STORE_IMAGES=false, IMAGEGEN_VERIFY_IMAGES)."""
    stack.start_worker()
    prompt = unique("[[fal:url-404]] a missing file")
    job = stack.wait_terminal(stack.enqueue(prompt))
    assert job["status"] == "succeeded" and job["images_stored"] is False, job
    assert "404" in job["storage_error"]
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1
    stack.stop()
    stack.workers.clear()
    stack.poller = None
    stack.start_worker(extra_env={"IMAGEGEN_STORE_IMAGES": "false"})
    job = stack.wait_terminal(stack.enqueue(unique("[[fal:url-404]] a missing file")))
    assert job["status"] == "failed" and "answers 404" in job["error"]


def test_fal_key_never_appears_in_logs_rows_or_task_messages(stack: Stack) -> None:
    key = "fal-secret-" + uuid.uuid4().hex
    stack.start_worker(extra_env={"FAL_KEY": key, "IMAGEGEN_LOG_FORMAT": "json"})
    app = stack.app()
    job_id = stack.enqueue(unique("[[fal:401]] a bad key"))
    seen: list[str] = []
    with app.connection_for_read() as conn:  # peek at what travels through Redis
        seen.append(json.dumps(conn.default_channel.client.lrange("imagegen", 0, -1), default=str))
    job = stack.wait_terminal(job_id)
    assert job["status"] == "failed" and "FAL_KEY" in job["error"]
    assert "fal.auth_rejected" in stack.logs()
    everything = stack.logs() + json.dumps(job) + "".join(seen)
    assert key not in everything


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize("resubmit", [False, True])
def test_a_submit_whose_worker_died_mid_post_is_not_blindly_repeated(
    stack: Stack, resubmit: bool
) -> None:
    from sqlalchemy import update

    from imagegen.models import AttemptOutcome, Job, JobAttempt
    from imagegen.worker.db import session_scope

    prompt = unique("a submit in flight when the worker died")
    job_id = stack.enqueue(prompt)
    with session_scope(stack.database_url) as session:  # what a SIGKILL mid-POST leaves
        session.execute(update(Job).where(Job.id == job_id).values(attempts=1))
        session.add(JobAttempt(job_id=job_id, number=1, outcome=AttemptOutcome.SENDING))
    stack.start_worker(extra_env={"IMAGEGEN_RESUBMIT_UNKNOWN": str(resubmit).lower()})
    job = stack.wait_terminal(job_id)
    outcomes = [a["outcome"] for a in job["attempt_log"]]
    sent = stack.emulator.stats()["submissions_by_prompt"].get(prompt, 0)
    if resubmit:
        assert (job["status"], outcomes, sent) == ("succeeded", ["unknown", "succeeded"], 1)
    else:
        assert (job["status"], outcomes, sent) == ("failed", ["unknown"], 0)
        assert "to avoid paying twice" in job["error"]
