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
    from imagegen.worker.db import session_scope
    from imagegen.worker.jobs.queries import get_job, job_to_dict

    with session_scope(stack.database_url) as session:
        return job_to_dict(get_job(session=session, job_id=job_id), with_attempts=True)


def _wait_for(what: str, predicate: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s:.0f} s"
        time.sleep(0.05)


def _worker_log(stack: Stack) -> str:
    """The worker's log and the poller's (which hears fal's COMPLETED)."""
    logs = sorted(stack.log_dir.glob("worker-*")) + sorted(stack.log_dir.glob("poller*"))
    return "\n".join(p.read_text(errors="replace") for p in logs)


def _through_proxy(stack: Stack) -> FaultyProxy:
    """A worker (two threads, a fleet cap: slots in Redis) whose Redis is behind a proxy."""
    proxy = FaultyProxy(REDIS_HOST, REDIS_PORT)
    proxied = stack.redis_url.replace(f"{REDIS_HOST}:{REDIS_PORT}", f"127.0.0.1:{proxy.port}")
    env = {"REDIS_URL": proxied, "IMAGEGEN_FAL_CONCURRENCY": "2", "IMAGEGEN_LEASE_S": "4"}
    stack.start_worker("--concurrency", "2", extra_env=env)
    return proxy


def _job_through_a_redis_outage(stack: Stack, proxy: FaultyProxy, outage_s: float) -> str:
    """Run one job with Redis gone while fal finishes it; then one more. The worker's log."""
    try:
        prompt = unique("[[fal:ok+latency:3]] while Redis restarts")
        job_id = stack.enqueue(prompt)
        _wait_for("submitted", lambda: _job(stack, job_id)["fal_request_id"] is not None)
        proxy.cut(outage_s)  # every connection dropped, none accepted meanwhile
        job = stack.wait_terminal(job_id, timeout_s=90)
        later = stack.enqueue(unique("after Redis came back"))
        assert stack.wait_terminal(later, timeout_s=90)["status"] == "succeeded"
    finally:
        proxy.close()
    log = _worker_log(stack)
    print(log)  # pytest shows it for a failed test
    assert proxy.drops >= 1
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1
    assert "Traceback" not in log
    return log


def test_a_redis_restart_under_a_running_job_is_waited_out(stack: Stack) -> None:
    """Back within the retries: the run goes on, one warning line per retry."""
    log = _job_through_a_redis_outage(stack, _through_proxy(stack), outage_s=5)
    retries = [line for line in log.splitlines() if "redis.retry" in line]
    assert retries and all("attempt=" in line for line in retries), log


def test_redis_gone_longer_than_the_retries_still_ends_the_job(stack: Stack) -> None:
    """Past the retries: the job still ends (Postgres is the truth); what could not reach
    Redis meanwhile says so in a line (a poller tick, a slot, a collect not published)."""
    log = _job_through_a_redis_outage(stack, _through_proxy(stack), outage_s=30)
    said = ("poller.tick_failed", "fleet.slot_not_", "collect.not_published")
    assert any(line in log for line in said), log


def _terminate_backends(database_url: str) -> int:
    """Terminate every connection to the test's database (a Postgres restart, to them);
    this process (the test) then opens new ones."""
    from sqlalchemy import create_engine, text

    from imagegen.worker.db import dispose_engines
    from tests.conftest import PG_ADMIN_URL

    name = database_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            query = text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            )
            return int(conn.execute(query, {"name": name}).scalar_one())
    finally:
        admin.dispose()
        dispose_engines()


def test_postgres_connections_terminated_under_a_running_job(stack: Stack) -> None:
    """The run's next write meets a terminated connection: one line per retry, and the job
    succeeds, submitted once."""
    stack.start_worker("--concurrency", "2")
    prompt = unique("[[fal:ok+latency:2]] while Postgres restarts")
    job_id = stack.enqueue(prompt)
    _wait_for("submitted", lambda: _job(stack, job_id)["fal_request_id"] is not None)
    assert _terminate_backends(stack.database_url) >= 1
    job = stack.wait_terminal(job_id, timeout_s=60)
    log = _worker_log(stack)
    print(log)  # pytest shows it for a failed test
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1
    assert "Traceback" not in log
    retries = [line for line in log.splitlines() if "db.retry" in line]
    assert retries and all("OperationalError" in line for line in retries), log


def test_a_sweep_pass_on_terminated_connections_waits_them_out_in_a_line(
    stack: Stack,
) -> None:
    """The worker's pooled connections are terminated: the sweep pass's writes are tried
    again (one line each, no traceback) and it republishes the job whose message was lost."""
    from imagegen.models import JobStatus
    from imagegen.worker.constants import SWEEP_TASK
    from tests.conftest import add_jobs

    stack.start_worker("--concurrency", "2")  # its pool is open (worker.warmed)
    (lost,) = add_jobs(stack.database_url, 1, JobStatus.QUEUED, lease_until=None)
    assert _terminate_backends(stack.database_url) >= 1
    stack.app().send_task(SWEEP_TASK)
    swept = stack.wait_terminal(lost, timeout_s=60)
    log = _worker_log(stack)
    print(log)  # pytest shows it for a failed test
    assert swept["status"] == "succeeded", swept
    assert "Traceback" not in log
    retries = [line for line in log.splitlines() if "db.retry" in line]
    assert retries and all("OperationalError" in line for line in retries), log
