"""worker.db.write: a write that meets a busy pool or a broken connection is tried again."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imagegen.worker.db import WARM_CONNECTIONS, dispose_engines, get_engine, open_pool, write
from imagegen.worker.settings import get_settings


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
    size = min(WARM_CONNECTIONS, get_settings().db_pool_size)
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
