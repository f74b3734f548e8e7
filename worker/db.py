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
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from imagegen import migrations
from imagegen.worker.errors import ServiceUnavailable
from imagegen.worker.logs import get_logger
from imagegen.worker.settings import get_settings

T = TypeVar("T")
log = get_logger(__name__)

MIGRATIONS_DIR = Path(migrations.__file__).parent


#: Connections a process keeps open while idle (and opens at worker start): a fleet of
#: workers at rest must fit Postgres' 100-connection default with room to spare.
WARM_CONNECTIONS = 5

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
    # IMAGEGEN_DB_POOL_SIZE is the most a process opens; only WARM_CONNECTIONS stay open idle
    # (a short task holds one for milliseconds; QueuePool closes overflow ones on return).
    # No pool_pre_ping (it doubles the round trips per transaction): a connection broken by a
    # Postgres restart raises on use, the pool discards it, and worker.db.write retries.
    # hide_parameters: prompts are user data; keep them out of error texts (logs, Flower).
    most = get_settings().db_pool_size
    kept = min(WARM_CONNECTIONS, most)
    return create_engine(
        database_url,
        pool_size=kept,
        max_overflow=most - kept,
        pool_recycle=1800,
        hide_parameters=True,
    )


def open_pool(database_url: str) -> int:
    """Open the connections an idle process keeps (worker start), not in its first burst of
    jobs; returns how many. Off Postgres it does nothing."""
    engine = get_engine(database_url)
    if engine.dialect.name != "postgresql":
        return 0
    kept = engine.pool.size() if isinstance(engine.pool, QueuePool) else WARM_CONNECTIONS
    connections = [engine.connect() for _ in range(min(WARM_CONNECTIONS, kept))]
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


def redacted(database_url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<DATABASE_URL is not a URL>"


def check_database(database_url: str) -> None:
    """Raise ``ServiceUnavailable`` unless the database answers and is migrated to this
    code's schema. A SQLite file that does not exist is reported, never created."""
    dsn = redacted(database_url)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(str(url.database)).resolve()
        if not path.exists():
            raise ServiceUnavailable(
                f"database {dsn} does not exist (no file {path}): run `imagegen db upgrade` "
                "to create it, or set DATABASE_URL",
                service="database",
                dsn=dsn,
            )
    try:
        with get_engine(database_url).connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        raise database_unavailable(database_url, exc) from exc
    scripts = ScriptDirectory.from_config(alembic_config(database_url))
    heads = set(scripts.get_heads())
    if current == heads:
        return
    if not current:
        problem = "is not migrated (no imagegen tables): run `imagegen db upgrade`"
    elif all(_known(scripts, revision) for revision in current):
        problem = f"is at revision {', '.join(sorted(current))}, behind: run `imagegen db upgrade`"
    else:
        problem = (
            f"is at revision {', '.join(sorted(current))}, which this imagegen does not know "
            "(migrated by a newer version): upgrade imagegen"
        )
    raise ServiceUnavailable(f"database {dsn} {problem}", service="database", dsn=dsn)


def _known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


#: (words in the driver's message, what it means and the fix), first match wins.
_REASONS = (
    ("too many", "refuses connections (too many clients): close some, or raise max_connections"),
    ("remaining connection slots", "refuses connections (too many clients): close some"),
    ("connection refused", "is unreachable (connection refused): start Postgres or fix the URL"),
    ("timeout expired", "is unreachable (timed out): check the host and port in DATABASE_URL"),
    ("could not translate host", "is unreachable (unknown host): fix the host in DATABASE_URL"),
    ("password authentication", "rejected the login: fix the user or password in DATABASE_URL"),
    ('role "', "has no such user: fix the user in DATABASE_URL"),
    ("does not exist", "does not exist: create it (createdb), then run `imagegen db upgrade`"),
    ("starting up", "is starting up: try again in a moment"),
    ("shutting down", "is shutting down: try again when it is back"),
    ("unable to open database file", "cannot be opened: check the path in DATABASE_URL"),
)


def database_unavailable(database_url: str, exc: BaseException) -> ServiceUnavailable:
    """The one-line ``ServiceUnavailable`` for a driver error (``exc``) on this database."""
    dsn = redacted(database_url)
    text = str(getattr(exc, "orig", None) or exc)
    lowered = text.lower()
    for words, meaning in _REASONS:
        if words in lowered:
            return ServiceUnavailable(f"database {dsn} {meaning}", service="database", dsn=dsn)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return ServiceUnavailable(
        f"database {dsn} cannot be used: {first}", service="database", dsn=dsn
    )
