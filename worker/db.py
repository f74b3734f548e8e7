"""One engine per process, short sessions, and the Alembic entry points."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

import migrations
from worker.logs import get_logger
from worker.settings import get_settings

T = TypeVar("T")
log = get_logger(__name__)

MIGRATIONS_DIR = Path(migrations.__file__).parent


_engines: dict[str, Engine] = {}
_autocommit: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(database_url: str) -> Engine:
    """The process's engine for this URL."""
    with _engines_lock:
        engine = _engines.get(database_url)
        if engine is None:
            engine = _engines[database_url] = _create_engine(database_url)
        return engine


def _autocommit_engine(database_url: str) -> Engine:
    """The process's engine in autocommit (the same pool), for one-statement writes."""
    engine = _autocommit.get(database_url)
    if engine is None:
        engine = get_engine(database_url).execution_options(isolation_level="AUTOCOMMIT")
        _autocommit[database_url] = engine
    return engine


def _create_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A pool as large as the writes a busy process makes at once: connections opened for a
    # burst beyond it are closed after it, and opening one costs more than the transaction.
    # No pool_pre_ping (it doubles the round trips per transaction): a connection broken by a
    # Postgres restart raises on use, the pool discards it, and worker.db.write retries.
    # hide_parameters: prompts are user data; keep them out of error texts (logs, Flower).
    return create_engine(
        database_url,
        pool_size=get_settings().db_pool_size,
        max_overflow=5,
        pool_recycle=1800,
        hide_parameters=True,
    )


def open_pool(database_url: str) -> int:
    """Open the process's pooled connections now (worker start), not in its first burst of
    jobs; returns how many the pool holds. Off Postgres it does nothing."""
    engine = get_engine(database_url)
    if engine.dialect.name != "postgresql":
        return 0
    connections = [engine.connect() for _ in range(get_settings().db_pool_size)]
    for connection in connections:
        connection.close()  # back to the pool, still open
    return len(connections)


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, forks)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _autocommit.clear()
        _session_factory.cache_clear()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=4)
def _session_factory(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(database_url), expire_on_commit=False)


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A short transaction: commits on success, rolls back on error."""
    session = _session_factory(database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def write(
    database_url: str,
    work: Callable[[Connection], T],
    *,
    one_statement: bool = False,
    attempts: int = 8,
    base_s: float = 0.25,
    cap_s: float = 5.0,
) -> T:
    """Run ``work`` in its own transaction, again if the connection to the database broke.

    ``work`` gets a Connection, not a Session: the worker's writes are Core statements and
    a Session's bookkeeping was a large share of their CPU.

    Used for the writes that record what fal said: a Postgres restart, a dropped
    connection or a pool whose connections are all busy for 30 s delays them (about 20 s
    at most by default) instead of losing them.
    ``work`` must be safe to repeat (every store function is: conditional updates).

    ``one_statement``: ``work`` sends a single statement to Postgres (the store functions
    that do say so), which then runs in autocommit: Postgres makes one statement atomic on
    its own, and a transaction around it costs two more round trips, BEGIN and COMMIT
    (measured here: 0.9 -> 0.55 ms of the worker's CPU a write, 2.3 -> 1.4 ms of wall time;
    three such writes a job). Off Postgres it changes nothing.
    """
    engine = get_engine(database_url)
    if one_statement and engine.dialect.name == "postgresql":
        engine = _autocommit_engine(database_url)
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as connection:
                return work(connection)
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            if attempt == attempts:
                raise
            delay = min(cap_s, base_s * 2 ** (attempt - 1))
            log.warning("db.retry", attempt=attempt, delay_s=delay, error=type(exc).__name__)
            time.sleep(delay)
    raise AssertionError("unreachable")


def alembic_config(database_url: str) -> Config:
    """Alembic's config, built here so that no URL lives in a file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
