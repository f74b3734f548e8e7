"""worker.db.write: a write that meets a busy pool or a broken connection is tried again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, event, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from models import AttemptOutcome, JobStatus
from tests.conftest import add_jobs
from worker import store
from worker.db import dispose_engines, get_engine, open_pool, write
from worker.settings import get_settings
from worker.store import JOBS


def test_a_pool_with_every_connection_busy_delays_the_write_instead_of_losing_it(
    database_url: str,
) -> None:
    calls: list[int] = []

    def work(db: Connection) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise PoolTimeout("QueuePool limit reached, connection timed out")
        return int(db.execute(text("SELECT 41 + 1")).scalar_one())

    assert write(database_url, work, base_s=0.01) == 42
    assert len(calls) == 2


def test_a_write_gives_up_after_its_attempts(database_url: str) -> None:
    def work(db: Connection) -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with pytest.raises(OperationalError):
        write(database_url, work, attempts=2, base_s=0.01)


def test_open_pool_opens_the_pooled_connections_at_worker_start(database_url: str) -> None:
    dispose_engines()
    connects: list[int] = []
    event.listen(get_engine(database_url), "connect", lambda *_: connects.append(1))
    size = get_settings().db_pool_size
    assert open_pool(database_url) == size == len(connects)
    assert write(database_url, lambda db: db.execute(text("SELECT 1")).scalar_one()) == 1
    assert len(connects) == size, "a write after the warm-up opened a connection of its own"
    dispose_engines()


def test_a_one_statement_write_runs_in_autocommit_on_postgres(database_url: str) -> None:
    def autocommit(db: Connection) -> bool:
        db.execute(text("SELECT 1"))
        return bool(db.connection.dbapi_connection.autocommit)  # type: ignore[union-attr]

    assert write(database_url, autocommit, one_statement=True) is True
    assert write(database_url, autocommit) is False  # the pool's connections are not changed


def test_the_store_writes_sent_as_one_statement_send_one(database_url: str) -> None:
    """The pipeline runs these with ``one_statement=True``, so each must stay one statement."""
    owner = "run-1"
    (job_id,) = add_jobs(database_url, 1, JobStatus.QUEUED)
    sent: list[str] = []
    engine = get_engine(database_url)

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement.split(None, 1)[0])

    event.listen(engine, "before_cursor_execute", count)
    try:
        steps: list[Callable[[Connection], Any]] = [
            lambda db: store.claim_first_submit(db=db, job_id=job_id, owner=owner, lease_s=60),
            lambda db: store.begin_attempt(db=db, job_id=job_id),
            lambda db: store.record_submitted(db=db, job_id=job_id, number=2, request_id="r-2"),
            lambda db: store.renew_lease(db=db, job_id=job_id, owner=owner, lease_s=60),
            lambda db: store.park_for_webhook(
                db=db, job_id=job_id, owner=owner, request_id="r-2", wait_s=60
            ),
            lambda db: store.webhook_body(db=db, request_id="r-2"),
            lambda db: store.mark_unknown(db=db, job_id=job_id, number=1),
            lambda db: store.finish(
                db=db,
                job_id=job_id,
                status=JobStatus.SUCCEEDED,
                attempt=(2, AttemptOutcome.SUCCEEDED),
                images=[{"url": "https://example.invalid/1.png"}],
            ),
        ]
        for step in steps:
            sent.clear()
            write(database_url, step, one_statement=True)
            assert len(sent) == 1, sent
    finally:
        event.remove(engine, "before_cursor_execute", count)
    with get_engine(database_url).connect() as db:
        row = db.execute(select(JOBS).where(JOBS.c.id == job_id)).mappings().one()
    assert (row["status"], row["attempts"], row["fal_request_id"]) == (
        JobStatus.SUCCEEDED,
        2,
        "r-2",
    )
