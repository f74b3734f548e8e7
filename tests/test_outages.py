"""Services going away under a running worker: Redis (broker and fleet keys) and Postgres.

Each outage is real: the worker reaches Redis through a TCP proxy the test cuts and
restores, or has its Postgres backends terminated. The job still ends correctly after the
service returns, and the worker logs one warning line per retry, never a traceback.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, Stack, unique
from tests.tcp_proxy import FaultyProxy

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def _job(stack: Stack, job_id: uuid.UUID) -> dict[str, Any]:
    from worker.db import session_scope
    from worker.queries import get_job, job_to_dict

    with session_scope(stack.database_url) as session:
        return job_to_dict(get_job(session=session, job_id=job_id), with_attempts=True)


def _wait_for(what: str, predicate: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s:.0f} s"
        time.sleep(0.05)


def _worker_log(stack: Stack) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(stack.log_dir.glob("worker-*")))


def test_redis_going_away_mid_job_logs_a_line_per_retry(stack: Stack) -> None:
    proxy = FaultyProxy(REDIS_HOST, REDIS_PORT)
    proxied = stack.redis_url.replace(f"{REDIS_HOST}:{REDIS_PORT}", f"127.0.0.1:{proxy.port}")
    try:
        stack.start_worker(
            "--concurrency", "2", extra_env={"REDIS_URL": proxied, "IMAGEGEN_FAL_CONCURRENCY": "2"}
        )
        prompt = unique("[[fal:ok+latency:3]] while Redis restarts")
        job_id = stack.enqueue(prompt)
        _wait_for("submitted", lambda: _job(stack, job_id)["fal_request_id"] is not None)
        proxy.cut(6)  # Redis is gone while fal finishes, and a while after
        job = stack.wait_terminal(job_id, timeout_s=90)
        later = stack.enqueue(unique("after Redis came back"))
        assert stack.wait_terminal(later, timeout_s=60)["status"] == "succeeded"
    finally:
        proxy.close()
    log = _worker_log(stack)
    assert proxy.drops >= 1
    assert job["status"] == "succeeded", f"{job}\n{log}"
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1
    assert "Traceback" not in log, log
    assert "redis.retry" in log, log
