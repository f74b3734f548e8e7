"""Postgres connections at rest: a worker keeps a few open, not its whole pool (issue 22)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, event, make_url, text

from imagegen.worker.db import WARM_CONNECTIONS, dispose_engines, get_engine, open_pool
from imagegen.worker.settings import get_settings
from tests.conftest import PG_ADMIN_URL, Stack, unique

#: A worker process at rest holds at most this many (issue 22, item 5).
AT_REST = 5
#: The worker's Postgres sessions carry this application_name (PGAPPNAME).
WORKER = "imagegen-test-worker"


def _connections(database_url: str, app: str | None = None) -> int:
    """Sessions connected to this test's database (those of one ``PGAPPNAME`` when given),
    counted from the admin database."""
    name = make_url(database_url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"
    if app is not None:
        query += " AND application_name = :app"
    try:
        with admin.connect() as conn:
            return int(conn.execute(text(query), {"name": name, "app": app}).scalar_one())
    finally:
        admin.dispose()


@pytest.fixture
def fresh_engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No engine or settings cached before or after the test (it sets the pool size)."""
    dispose_engines()
    get_settings.cache_clear()
    yield monkeypatch
    dispose_engines()
    monkeypatch.delenv("IMAGEGEN_DB_POOL_SIZE", raising=False)
    get_settings.cache_clear()


@pytest.mark.parametrize(("pool_size", "opened"), [(None, WARM_CONNECTIONS), ("3", 3)])
def test_open_pool_opens_the_connections_an_idle_process_keeps(
    database_url: str, fresh_engines: pytest.MonkeyPatch, pool_size: str | None, opened: int
) -> None:
    if pool_size is not None:
        fresh_engines.setenv("IMAGEGEN_DB_POOL_SIZE", pool_size)
    assert WARM_CONNECTIONS <= AT_REST
    connects: list[int] = []
    event.listen(get_engine(database_url), "connect", lambda *_: connects.append(1))
    assert open_pool(database_url) == opened == len(connects)
    assert _connections(database_url) == opened
    with get_engine(database_url).connect() as conn:
        conn.execute(text("SELECT 1"))
    assert len(connects) == opened, "a query after the warm-up opened a connection of its own"


def test_a_burst_opens_up_to_the_pool_size_and_closes_the_extra_ones_after(
    database_url: str, fresh_engines: pytest.MonkeyPatch
) -> None:
    fresh_engines.setenv("IMAGEGEN_DB_POOL_SIZE", "12")
    engine = get_engine(database_url)
    burst = [engine.connect() for _ in range(12)]  # IMAGEGEN_DB_POOL_SIZE: all at once
    for conn in burst:
        conn.execute(text("SELECT 1"))
    assert _connections(database_url) == 12
    for conn in burst:
        conn.close()
    assert _connections(database_url) <= AT_REST


def _wait_for(stack: Stack, words: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while words not in stack.logs():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _peak(database_url: str, seconds: float, app: str) -> int:
    """The most sessions ``app`` had on the database over ``seconds``."""
    peak, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, _connections(database_url, app))
        time.sleep(0.05)
    return peak


def _start_worker(stack: Stack, *, poller: bool) -> None:
    """A 16-thread worker (worker_argv(concurrency=16)) whose sessions are named WORKER
    (libpq's PGAPPNAME), so that the poller's and this process's are not counted."""
    if poller:
        try:
            stack.start_poller()
        except RuntimeError as exc:
            if "No such command 'poller'" not in str(exc):
                raise
            pytest.skip("no `imagegen poller` on this branch yet (issue 22)")
    stack.start_worker("--concurrency", "16", extra_env={"PGAPPNAME": WORKER}, poller=False)
    # The warm-up (open_pool at worker_ready) logs worker.warmed; a renamed line costs 5 s.
    _wait_for(stack, "worker.warmed", 5)


@pytest.mark.slow
def test_an_idle_16_thread_worker_holds_at_most_5_connections(stack: Stack) -> None:
    _start_worker(stack, poller=False)
    at_rest = _peak(stack.database_url, 1.0, WORKER)
    assert 0 < at_rest <= AT_REST, f"{at_rest} connections at rest\n{stack.logs()}"


@pytest.mark.slow
def test_a_worker_closes_the_connections_a_burst_of_jobs_opened(stack: Stack) -> None:
    _start_worker(stack, poller=True)
    jobs = [stack.enqueue(unique("a lighthouse at dusk")) for _ in range(48)]
    for job_id in jobs:
        assert stack.wait_terminal(job_id, timeout_s=60)["status"] == "succeeded"
    time.sleep(0.5)  # the last outcomes' writes return their connections
    after = _peak(stack.database_url, 1.0, WORKER)
    assert after <= AT_REST, f"{after} connections after a burst of jobs\n{stack.logs()}"
