"""Real services for the tests: Postgres, Redis, the fal emulator and Celery workers.

The emulator starts before anything imports fal-client (which reads FAL_QUEUE_RUN_HOST at
import), and its environment is exported so that worker subprocesses inherit it. Each test
gets its own Postgres database (cloned from a migrated template) and its own Redis db.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get(
    "IMAGEGEN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: One template per pytest process, so parallel runs on one machine do not collide.
TEMPLATE_DB = f"imagegen_test_template_{os.getpid()}"
API_KEY = "test-api-key-not-secret"
ROOT = Path(__file__).resolve().parent.parent

#: Fast retry and polling settings so failure paths finish in seconds.
FAST_ENV = {
    "IMAGEGEN_BACKOFF_BASE_S": "0.2",
    "IMAGEGEN_BACKOFF_CAP_S": "1",
    "IMAGEGEN_POLL_INITIAL_S": "0.1",
    "IMAGEGEN_POLL_MAX_S": "0.3",
    "IMAGEGEN_SUBMIT_TIMEOUT_S": "2",
    "IMAGEGEN_POLL_TIMEOUT_S": "2",
    "IMAGEGEN_GENERATION_TIMEOUT_S": "20",
    "IMAGEGEN_MAX_ATTEMPTS": "3",
}

_emulator: Any = None


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def pytest_configure(config: pytest.Config) -> None:
    global _emulator
    from imagegen.worker.fal.emulator import FalEmulator

    _emulator = FalEmulator(latency_s=0.3).start()
    os.environ.update(_emulator.env())
    os.environ.setdefault("FAL_KEY", "test-key-not-secret")
    # stored images of the whole run in one temporary directory; input images handed to
    # the emulator inline (it cannot take fal-client's CDN upload)
    os.environ.setdefault(
        "IMAGEGEN_STORAGE_URL", "file:" + tempfile.mkdtemp(prefix="imagegen-test-images-")
    )
    os.environ.setdefault("IMAGEGEN_INPUT_IMAGES_VIA", "data_uri")
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _emulator is not None:
        _emulator.stop()


@pytest.fixture(scope="session")
def emulator() -> Any:
    return _emulator


@pytest.fixture(autouse=True)
def _clean_emulator(emulator: Any) -> None:
    emulator.configure(latency_s=0.3, concurrency_limit=None)


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """For a test whose code calls ``worker.logs.configure()``: afterwards structlog is as
    the other tests found it, not bound to this test's captured (then closed) stderr."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated database that every test's database is cloned from."""
    if not _port_open("127.0.0.1", 5432):
        pytest.exit("Postgres is not reachable on 127.0.0.1:5432 (see README: Services)", 2)
    from sqlalchemy import create_engine, text

    from imagegen.worker.db import upgrade

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {TEMPLATE_DB}"))
    upgrade(_db_url(TEMPLATE_DB))
    yield TEMPLATE_DB
    from imagegen.worker.db import dispose_engines

    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"))
    admin.dispose()


def _db_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@contextmanager
def fresh_database(template: str) -> Iterator[str]:
    """A database cloned from ``template`` (``pg_template``), dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"imagegen_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {template}"))
    try:
        yield _db_url(name)
    finally:
        from imagegen.worker.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated Postgres database for this test."""
    with fresh_database(pg_template) as url:
        yield url


@contextmanager
def _leased_redis() -> Iterator[str]:
    if not _port_open(REDIS_HOST, REDIS_PORT):
        pytest.exit(f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT} (see README)", 2)
    import redis

    from tests.redis_lease import lease_free_db

    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0) as locks:
        lease = lease_free_db(locks)
        if lease is None:
            pytest.fail("no free Redis database for this test (15 in use by other test runs)")
        try:
            yield lease.url
        finally:
            lease.release()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A flushed Redis database for this test, held by a lease in db 0 (tests.redis_lease).

    The lease lets several pytest runs and benchmarks share one Redis server (16 databases):
    a database is flushed, before and after the test, only while this test holds it.
    """
    with _leased_redis() as url:
        yield url


@dataclass
class Stack:
    """One test's services: settings pointing at them, and helpers to drive them."""

    database_url: str
    redis_url: str
    emulator: Any
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path = field(default_factory=Path)
    poller: subprocess.Popen[bytes] | None = None
    #: where each log file began for this test (a stack shared by a module's tests)
    log_from: dict[str, int] = field(default_factory=dict)

    def settings(self, **overrides: Any) -> Any:
        from imagegen.worker.settings import Settings

        values = {**self.env, **{k.upper(): str(v) for k, v in overrides.items()}}
        return Settings(**{k: v for k, v in values.items()})  # aliases are env names

    def app(self) -> Any:
        from imagegen.worker.celery_app import create_app

        return create_app(self.settings())

    def enqueue(self, prompt: str, **kwargs: Any) -> uuid.UUID:
        from imagegen.worker.jobs.enqueue import enqueue

        return enqueue(prompt, settings=self.settings(), app=self.app(), **kwargs)

    def start_worker(
        self, *args: str, extra_env: dict[str, str] | None = None, poller: bool = True
    ) -> None:
        """A Celery worker, and this stack's poller with the first one (``poller=False``:
        none, e.g. to test what happens without it)."""
        self.start_workers(1, *args, extra_env=extra_env, poller=poller)

    def start_workers(
        self, count: int, *args: str, extra_env: dict[str, str] | None = None, poller: bool = True
    ) -> None:
        """``count`` workers (and the poller, as ``start_worker``) started side by side and
        all ready on return: each spends a second or two importing, and CI has two cores."""
        waits = [self._spawn_poller(extra_env)] if poller and self.poller is None else []
        env = {**os.environ, **self.env, **(extra_env or {})}
        from imagegen.worker.celery_app import worker_argv

        for _ in range(count):
            log = self.log_dir / f"worker-{len(self.workers)}.log"
            name = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}@%h"
            cmd = [*worker_argv(concurrency=8, name=name), *args]
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                )
            self.workers.append(proc)
            waits.append(partial(self._wait_ready, log, proc))
        for wait in waits:
            wait()

    def start_poller(self, extra_env: dict[str, str] | None = None) -> None:
        """``imagegen poller``: it hears fal's COMPLETED and publishes the collects."""
        self._spawn_poller(extra_env)()

    def _spawn_poller(self, extra_env: dict[str, str] | None) -> Callable[[], None]:
        """Start the poller; returns what waits until it is ready."""
        from imagegen.worker.cli.demo import poller_argv

        env = {**os.environ, **self.env, **(extra_env or {})}
        log = self.log_dir / "poller.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                poller_argv(), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.poller = proc

        def wait() -> None:
            deadline = time.monotonic() + 30
            while b"poller.ready" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"imagegen poller did not start:\n{log.read_text()}")
                time.sleep(0.05)

        return wait

    def start_api(self, extra_env: dict[str, str] | None = None) -> str:
        """`imagegen api` on a free port (the documented command); returns its base URL."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "IMAGEGEN_API_KEY": API_KEY, **self.env, **(extra_env or {})}
        log = self.log_dir / f"api-{port}.log"
        cmd = [sys.executable, "-m", "imagegen.worker.cli", "api", "--port", str(port)]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        deadline = time.monotonic() + 30
        while not _port_open("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"imagegen api did not start:\n{log.read_text()}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    def _wait_ready(self, log: Path, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}:\n{log.read_text()}")
            if b" ready." in log.read_bytes():
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready after 30 s:\n{log.read_text()}")

    def wait_terminal(self, job_id: uuid.UUID, timeout_s: float = 30) -> dict[str, Any]:
        from imagegen.worker.db import session_scope
        from imagegen.worker.jobs.queries import get_job, job_to_dict

        deadline = time.monotonic() + timeout_s
        while True:
            with session_scope(self.database_url) as session:
                data = job_to_dict(get_job(session=session, job_id=job_id), with_attempts=True)
            if data["status"] in ("succeeded", "refused", "failed", "cancelled"):
                return data
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {data['status']}: {data}\n{self.logs()}")
            time.sleep(0.05)

    def logs(self) -> str:
        """The processes' logs, from where this test began (``since_now``)."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            with path.open("rb") as log:
                log.seek(self.log_from.get(path.name, 0))
                parts.append(log.read().decode(errors="replace"))
        return "\n".join(parts)

    def since_now(self) -> Stack:
        """The same services and processes, with ``logs()`` from this moment on."""
        offsets = {p.name: p.stat().st_size for p in self.log_dir.glob("*.log")}
        return replace(self, log_from=offsets)

    def _procs(self) -> list[subprocess.Popen[bytes]]:
        return [*self.workers, *([self.poller] if self.poller is not None else [])]

    def kill(self) -> None:
        """The end of a test: no test looks at a shutdown then (``stop`` is the graceful
        one), so SIGKILL instead of waiting out Celery's warm shutdown (~1.5 s a worker)."""
        for proc in self._procs():
            proc.kill()
        for proc in self._procs():
            proc.wait()

    def stop(self) -> None:
        procs = self._procs()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def stack(database_url: str, redis_url: str, emulator: Any, tmp_path: Path) -> Iterator[Stack]:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, **emulator.env(), **FAST_ENV}
    s = Stack(database_url, redis_url, emulator, env, log_dir=tmp_path)
    yield s
    s.kill()


@pytest.fixture
def running(stack: Stack) -> Stack:
    """The stack with one real Celery worker running."""
    stack.start_worker()
    return stack


@pytest.fixture(scope="module")
def _module_running(
    request: pytest.FixtureRequest,
    pg_template: str,
    emulator: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, list[str]]]:
    """The module's worker gets the module's ``SHARED_WORKER_ENV`` (if any) on top."""
    with fresh_database(pg_template) as database, _leased_redis() as redis:
        env = {"DATABASE_URL": database, "REDIS_URL": redis, **emulator.env(), **FAST_ENV}
        s = Stack(database, redis, emulator, env, log_dir=tmp_path_factory.mktemp("stack"))
        try:
            empty = _empty_tables(database)
            s.start_worker(extra_env=getattr(request.module, "SHARED_WORKER_ENV", None))
            yield s, empty
        finally:
            s.kill()


def _empty_tables(database_url: str) -> list[str]:
    """The tables a freshly migrated database has no rows in."""
    from sqlalchemy import text

    from imagegen.worker.db import get_engine

    query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    with get_engine(database_url).connect() as db:
        names = db.execute(text(query)).scalars().all()
        return [n for n in names if db.execute(text(f"SELECT NOT EXISTS (TABLE {n})")).scalar()]


@pytest.fixture
def shared_running(_module_running: tuple[Stack, list[str]]) -> Stack:
    """Like ``running``, but one worker and poller (and database, Redis db) for the module's
    tests: starting and stopping them costs ~5 s a test. Each test starts on tables as a
    fresh database has them (no jobs, refusals or cool-downs of earlier tests), and its
    ``logs()`` are its own lines. For tests that leave no other state behind (a locked
    account, fleet keys) and wait for their own jobs to end."""
    stack, empty = _module_running
    _truncate(stack.database_url, empty)
    return stack.since_now()


def _truncate(database_url: str, tables: list[str]) -> None:
    """Empty the tables; tried again when it meets the worker's last writes of the test
    before (a deadlock or a lock wait Postgres gives up on)."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from imagegen.worker.db import get_engine

    for attempt in range(5):
        try:
            with get_engine(database_url).begin() as db:
                db.execute(text("SET LOCAL lock_timeout = '5s'"))
                db.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
            return
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.2)


def unique(text: str) -> str:
    """A prompt no other test uses (the emulator counts submissions per prompt)."""
    return f"{text} #{uuid.uuid4().hex[:8]}"


def add_jobs(database_url: str, count: int, status: Any, **values: object) -> list[uuid.UUID]:
    """Job rows written straight into the table (tests of the table itself)."""
    from sqlalchemy import insert  # imported here: the settings are exported first

    from imagegen.models import utcnow
    from imagegen.worker.db import get_engine
    from imagegen.worker.jobs import state

    now = utcnow()
    ids = [uuid.uuid4() for _ in range(count)]
    rows = [
        {
            "id": job_id,
            "prompt": "a fox",
            "params": {},
            "model": "openai/gpt-image-2",
            "status": status,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "lease_until": now + timedelta(seconds=60),
            **values,
        }
        for job_id in ids
    ]
    with get_engine(database_url).begin() as db:
        db.execute(insert(state.JOBS), rows)
    return ids
