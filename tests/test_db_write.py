"""worker.db.write: a write that meets a busy pool or a broken connection is tried again."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from worker.db import write


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
