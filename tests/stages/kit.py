"""What the unit tests of worker/jobs share: a migrated SQLite file per test, Deps built
around the fake fal (``worker.fal.fake``), the in-process limiter and account guard, and a
Celery app that only records what it is asked to publish.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any, cast

from celery import Celery
from sqlalchemy import insert, select

from imagegen.models import JobAttempt, utcnow
from imagegen.worker.db import upgrade, write
from imagegen.worker.fal.account import AccountGuard
from imagegen.worker.fal.fake import FakeFal
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.jobs import state, submit
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.jobs.enqueue import _row
from imagegen.worker.jobs.params import validate_request
from imagegen.worker.jobs.retry import RetryPolicy
from imagegen.worker.moderation import build_chain
from imagegen.worker.settings import Settings

JOBS = state.JOBS
ATTEMPTS = JobAttempt.__table__
MAX_ATTEMPTS = 3


class RecordingApp:
    """Celery as the stages use it: ``send_task`` only, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        self.sent.append((name, list(args or []), options))

    def names(self) -> list[str]:
        return [name for name, _args, _options in self.sent]


def make_deps(
    url: str,
    fal: FakeFal,
    app: RecordingApp,
    *,
    limit: int | None = 4,
    moderation: str | None = None,
    **env: Any,
) -> Deps:
    values = {"DATABASE_URL": url, "IMAGEGEN_MAX_ATTEMPTS": MAX_ATTEMPTS, **env}
    settings = Settings.model_validate({k: str(v) for k, v in values.items()})
    return Deps(
        settings=settings,
        gateway=fal,
        limiter=FalLimiter(None, limit=limit, lease_s=60.0),
        guard=AccountGuard(None, 60),
        policy=RetryPolicy(max_attempts=MAX_ATTEMPTS, rand=lambda: 0.0),
        app=cast(Celery, app),
        moderation=build_chain(moderation) if moderation else None,
    )


def add_job(deps: Deps, prompt: str = "a lighthouse at dusk", **overrides: Any) -> uuid.UUID:
    """A queued job, the row ``worker.jobs.enqueue.enqueue`` writes (without publishing it)."""
    request = validate_request({"prompt": prompt}, settings=deps.settings)
    row = {**_row(request, deps.settings, utcnow()), **overrides}
    write(deps.settings.database_url, lambda db: db.execute(insert(JOBS), [row]))
    return cast(uuid.UUID, row["id"])


def job(deps: Deps, job_id: uuid.UUID) -> dict[str, Any]:
    query = select(JOBS).where(JOBS.c.id == job_id)
    return dict(write(deps.settings.database_url, lambda db: db.execute(query).one())._mapping)


def attempts_of(deps: Deps, job_id: uuid.UUID) -> list[dict[str, Any]]:
    query = select(ATTEMPTS).where(ATTEMPTS.c.job_id == job_id).order_by(ATTEMPTS.c.number)
    rows = write(deps.settings.database_url, lambda db: db.execute(query).all())
    return [dict(r._mapping) for r in rows]


def completed(deps: Deps, job_id: uuid.UUID) -> None:
    """The poller heard COMPLETED: at_fal -> collecting."""
    moved = write(deps.settings.database_url, lambda db: state.move(db, job_id, "completed"))
    assert moved is not None


def to_collecting(deps: Deps, job_id: uuid.UUID) -> None:
    assert submit.run(job_id, deps).summary.startswith("at_fal:")
    completed(deps, job_id)


def migrate(directory: Path) -> Path:
    """A migrated SQLite file, once per module: each test works on a copy (``copy_of``)."""
    path = directory / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def copy_of(template: Path, directory: Path) -> str:
    path = directory / "jobs.db"
    shutil.copy(template, path)
    return f"sqlite:///{path}"
