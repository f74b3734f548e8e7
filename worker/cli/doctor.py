"""``imagegen doctor``: is every service this setup needs there? One line per check.

Each check has a short timeout, so a dead service costs seconds, not minutes. A check
whose premise failed (migrations without Postgres, a worker without Redis) is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from imagegen.worker.constants import JOB_QUEUE, NEXT_QUEUE
from imagegen.worker.settings import Settings

#: seconds each network check may take (Celery's ping waits this long for replies)
TIMEOUT_S = 3.0
PING_TIMEOUT_S = 1.5

#: moderation checkers that call a service, and the key each needs
MODERATION_KEYS = {
    "openai": ("openai_api_key", "OPENAI_API_KEY"),
    "anthropic": ("anthropic_api_key", "ANTHROPIC_API_KEY"),
}


@dataclass(frozen=True)
class Check:
    """One line of the report; ``ok`` None: skipped because an earlier check failed."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "-"}[self.ok]
        fix = f" -> {self.fix}" if self.fix and not self.ok else ""
        return f"{mark} {self.name:<10} {self.detail}{fix}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(settings: Settings) -> list[Check]:
    checks = list(_database(settings.database_url))
    redis_check = _redis(settings.redis_url)
    checks.append(redis_check)
    if redis_check.ok:
        checks.append(_worker(settings))
    else:
        checks.append(Check("worker", None, "skipped (no broker to ask)"))
    checks.append(_fal())
    checks.append(_storage(settings))
    checks.append(_keys(settings))
    return checks


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _database(database_url: str) -> Iterator[Check]:
    url = make_url(database_url)
    shown = url.render_as_string(hide_password=True)
    upgrade = "run: imagegen db upgrade"
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        yield Check("database", False, f"{shown}: no such file", f"{upgrade}, or set DATABASE_URL")
        yield Check("migrations", None, "skipped (no database)")
        return
    connect_args = {"connect_timeout": int(TIMEOUT_S)} if url.get_backend_name() != "sqlite" else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            current = _current_revision(connection)
    except SQLAlchemyError as exc:
        yield Check(
            "database", False, f"{shown}: {_first_line(exc)}", "start it, or fix DATABASE_URL"
        )
        yield Check("migrations", None, "skipped (database unreachable)")
        return
    finally:
        engine.dispose()
    yield Check("database", True, f"{shown} reachable")
    head = _head_revision(database_url)
    if current == head:
        yield Check("migrations", True, f"at head ({head})")
    else:
        yield Check("migrations", False, f"at {current or 'none'}, head is {head}", upgrade)


def _current_revision(connection: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _head_revision(database_url: str) -> str | None:
    from alembic.script import ScriptDirectory

    from imagegen.worker.db import alembic_config

    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def _redis(redis_url: str) -> Check:
    from redis import Redis
    from redis.exceptions import RedisError

    from imagegen.worker.cli.config_view import mask_url

    shown = mask_url(redis_url)
    if redis_url.startswith("sqla+"):
        return Check("redis", True, f"not used (embedded broker {shown})")
    client = Redis.from_url(redis_url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        return Check("redis", False, f"{shown}: {_first_line(exc)}", "start it, or fix REDIS_URL")
    finally:
        client.close()
    return Check("redis", True, f"{shown} reachable")


def _worker(settings: Settings) -> Check:
    from imagegen.worker.celery_app import create_app

    app = create_app(settings)
    try:
        replies = app.control.inspect(timeout=PING_TIMEOUT_S).active_queues() or {}
    except Exception as exc:  # whatever the broker's client raised: one line
        return Check("worker", False, f"could not ask the workers: {_first_line(exc)}")
    finally:
        app.close()
    for queue in (JOB_QUEUE, NEXT_QUEUE):  # no consumer of imagegen.next: nothing is collected
        consuming = sorted(
            name for name, queues in replies.items() if any(q["name"] == queue for q in queues)
        )
        if not consuming:
            return Check(
                "worker",
                False,
                f"no worker consumes the queue {queue!r}",
                "start one: celery -A imagegen.worker worker --pool threads "
                "-Q imagegen,imagegen.next,imagegen.callbacks",
            )
    return Check(
        "worker", True, f"{len(consuming)} consuming {JOB_QUEUE!r}: {', '.join(consuming)}"
    )


def _fal() -> Check:
    from imagegen.worker.fal.gateway import queue_host, targets_production

    host = queue_host()
    fix = "check outbound HTTPS" + ("" if targets_production() else ", or FAL_QUEUE_RUN_HOST")
    try:
        # any HTTP answer (404 at the root) shows the host, TLS and the route are there
        answer = httpx.get(f"https://{host}/", timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Check("fal", False, f"https://{host}: {_first_line(exc)}", fix)
    return Check("fal", True, f"https://{host} answers (HTTP {answer.status_code})")


def _storage(settings: Settings) -> Check:
    """Where images are stored (IMAGEGEN_STORAGE_URL): writable / reachable."""
    from imagegen.worker.errors import ImagegenError
    from imagegen.worker.media.storage import open_storage

    fix = "check IMAGEGEN_STORAGE_URL (and the AWS_* variables for s3://)"
    try:
        storage = open_storage(settings.storage_url)
        storage.check()
    except ImagegenError as exc:
        return Check("storage", False, _first_line(exc), fix)
    shown = storage.describe()
    if not settings.store_images:
        return Check("storage", True, f"{shown} (inputs only: IMAGEGEN_STORE_IMAGES=false)")
    return Check("storage", True, f"{shown} is writable")


def _keys(settings: Settings) -> Check:
    from imagegen.worker.fal.gateway import queue_host, targets_production

    missing: list[str] = []
    present: list[str] = []
    if settings.fal_key is not None and settings.fal_key.get_secret_value():
        present.append("FAL_KEY set")
    elif targets_production():
        missing.append("FAL_KEY (fal.ai needs it)")
    for checker in settings.moderation.split(","):
        attribute, env_name = MODERATION_KEYS.get(checker, ("", ""))
        if not attribute:
            continue
        key = getattr(settings, attribute, None)  # absent: this build lacks the checker
        if key is not None and key.get_secret_value():
            present.append(f"{env_name} set")
        else:
            missing.append(f"{env_name} (IMAGEGEN_MODERATION uses {checker})")
    if missing:
        return Check("keys", False, f"not set: {', '.join(missing)}", "set them in the env or .env")
    if not present or present[0] != "FAL_KEY set":
        present.insert(0, f"FAL_KEY not needed ({queue_host()} is an emulator)")
    return Check("keys", True, ", ".join(present))
