"""Retention and erasure: delete stored images and redact prompts of ended jobs.

``purge`` is what ``imagegen purge`` and the beat schedule run: terminal jobs created before
a cut lose their stored images (outputs and edit inputs) and/or their prompt. ``erase`` is a
user's erasure request for one job, whatever its age. The outcome stays: status, refusal
category and message, and the ``images`` records (key, sha256, size) are kept; only the
bytes and the prompt go, and ``images_purged_at`` / ``prompt_redacted_at`` say when.

Order, so a crash loses nothing: a row's objects are deleted from storage first, then the
row is marked. A crash between the two leaves an unmarked row whose objects are gone; the
next run deletes them again (a missing object is fine) and marks it. A row is never marked
purged while its objects still exist. Work goes in batches, each read and each mark its own
short transaction, with no transaction held open across storage calls.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, func, or_, select, tuple_, update

from imagegen.models import TERMINAL_STATUSES, utcnow
from imagegen.worker.db import get_engine, write
from imagegen.worker.errors import JobConflict, JobNotFound
from imagegen.worker.jobs.state import JOBS
from imagegen.worker.logs import get_logger
from imagegen.worker.settings import Settings

if TYPE_CHECKING:
    from imagegen.worker.media.storage import Storage

log = get_logger(__name__)
#: rows per batch: one read, up to this many jobs' deletes, one mark
BATCH = 200
_TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATUSES))


@dataclass
class PurgeReport:
    """What a purge or an erasure removed (``dry_run``: what it would remove)."""

    dry_run: bool = False
    #: jobs touched, by either half
    jobs: int = 0
    #: jobs marked images_purged_at (with or without images: the next run skips them), and
    #: the storage objects deleted for them (one already gone counts for nothing)
    image_jobs: int = 0
    images_deleted: int = 0
    bytes_freed: int = 0
    prompts_redacted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_keys(
    images: list[dict[str, Any]] | None, inputs: list[dict[str, Any]] | None
) -> list[str]:
    """Every object of ours a job has: its outputs, then its edit inputs."""
    records = [*(images or []), *(inputs or [])]
    return [str(r["storage_key"]) for r in records if isinstance(r, dict) and r.get("storage_key")]


def purge(
    database_url: str,
    storage: Storage,
    *,
    images_older_than: timedelta | None,
    prompts_older_than: timedelta | None,
    dry_run: bool,
    now: datetime | None = None,
) -> PurgeReport:
    """Terminal jobs created before ``now - images_older_than`` lose their stored images,
    before ``now - prompts_older_than`` their prompt (None: that half is off)."""
    now = now or utcnow()
    report = PurgeReport(dry_run=dry_run)
    image_cut = now - images_older_than if images_older_than is not None else None
    prompt_cut = now - prompts_older_than if prompts_older_than is not None else None
    report.jobs = _count_due(database_url, image_cut, prompt_cut)
    if image_cut is not None:
        _purge_images(database_url, storage, image_cut, now, report)
    if prompt_cut is not None:
        _redact_prompts(database_url, prompt_cut, now, report)
    log.info("retention.purge", **report.as_dict())
    return report


def purge_from_settings(
    settings: Settings, storage: Storage, *, dry_run: bool = False
) -> PurgeReport:
    """``purge`` with IMAGEGEN_IMAGE_RETENTION_DAYS / IMAGEGEN_PROMPT_RETENTION_DAYS (the beat
    task's entry point); a setting left unset turns its half off."""
    return purge(
        settings.database_url,
        storage,
        images_older_than=_days(settings.image_retention_days),
        prompts_older_than=_days(settings.prompt_retention_days),
        dry_run=dry_run,
    )


def _days(days: float | None) -> timedelta | None:
    return timedelta(days=days) if days is not None else None


def _count_due(database_url: str, image_cut: datetime | None, prompt_cut: datetime | None) -> int:
    """Jobs either half will touch (counted first: the halves overlap)."""
    due = []
    if image_cut is not None:
        due.append((JOBS.c.created_at < image_cut) & JOBS.c.images_purged_at.is_(None))
    if prompt_cut is not None:
        due.append((JOBS.c.created_at < prompt_cut) & JOBS.c.prompt_redacted_at.is_(None))
    if not due:
        return 0
    query = select(func.count()).select_from(JOBS).where(JOBS.c.status.in_(_TERMINAL), or_(*due))
    with get_engine(database_url).connect() as db:
        return int(db.execute(query).scalar_one())


def _due(database_url: str, cut: datetime, mark: Any, *columns: Any) -> Iterator[list[Row[Any]]]:
    """Batches of terminal jobs created before ``cut`` whose ``mark`` is unset, oldest first.

    Keyset paging on (created_at, id): each read walks the created_at index forward from
    the last row seen (a dry run marks nothing, so rows do not drop out by themselves).
    """
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        query = (
            select(JOBS.c.id, JOBS.c.created_at, *columns)
            .where(JOBS.c.status.in_(_TERMINAL), JOBS.c.created_at < cut, mark.is_(None))
            .order_by(JOBS.c.created_at, JOBS.c.id)
            .limit(BATCH)
        )
        if after is not None:
            query = query.where(tuple_(JOBS.c.created_at, JOBS.c.id) > tuple_(*after))
        with get_engine(database_url).connect() as db:
            rows = list(db.execute(query).all())
        if not rows:
            return
        after = (rows[-1].created_at, rows[-1].id)
        yield rows


def _purge_images(
    database_url: str, storage: Storage, cut: datetime, now: datetime, report: PurgeReport
) -> None:
    for rows in _due(database_url, cut, JOBS.c.images_purged_at, JOBS.c.images, JOBS.c.inputs):
        for row in rows:  # objects first, then the mark: see the module docstring
            _remove_objects(storage, storage_keys(row.images, row.inputs), report)
        ids = [row.id for row in rows]
        if not report.dry_run:
            ids = write(database_url, partial(_mark_images, ids=ids, now=now))
        report.image_jobs += len(ids)


def _remove_objects(storage: Storage, keys: list[str], report: PurgeReport) -> None:
    """Delete (dry run: measure) each object; one already gone counts for nothing."""
    for key in keys:
        size = storage.size(key)
        if size is None:
            continue
        if not report.dry_run:
            storage.delete(key)
        report.images_deleted += 1
        report.bytes_freed += size


def _mark_images(db: Connection, ids: list[uuid.UUID], now: datetime) -> list[uuid.UUID]:
    marked = db.execute(
        update(JOBS)
        .where(JOBS.c.id.in_(ids), JOBS.c.images_purged_at.is_(None))
        .values(images_purged_at=now, updated_at=now)
        .returning(JOBS.c.id)
    )
    return list(marked.scalars())


def _redact_prompts(database_url: str, cut: datetime, now: datetime, report: PurgeReport) -> None:
    for rows in _due(database_url, cut, JOBS.c.prompt_redacted_at):
        ids = [row.id for row in rows]
        if not report.dry_run:
            ids = write(database_url, partial(_redact, ids=ids, now=now))
        report.prompts_redacted += len(ids)


def _redact(db: Connection, ids: list[uuid.UUID], now: datetime) -> list[uuid.UUID]:
    done = db.execute(
        update(JOBS)
        .where(JOBS.c.id.in_(ids), JOBS.c.prompt_redacted_at.is_(None))
        .values(prompt="", prompt_redacted_at=now, updated_at=now)
        .returning(JOBS.c.id)
    )
    return list(done.scalars())


def erase(database_url: str, storage: Storage, job_id: uuid.UUID) -> PurgeReport:
    """A user's erasure request: the job's stored images (outputs, inputs) and its prompt
    go now, whatever its age. Idempotent. An open job is a ``JobConflict`` (nothing is
    deleted: its stages may still write images), an unknown one ``JobNotFound``."""
    with get_engine(database_url).connect() as db:
        row = db.execute(
            select(JOBS.c.status, JOBS.c.images, JOBS.c.inputs).where(JOBS.c.id == job_id)
        ).one_or_none()
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    if row.status not in _TERMINAL:
        raise JobConflict(f"job {job_id} is still {row.status}: cancel it first")
    report = PurgeReport()
    _remove_objects(storage, storage_keys(row.images, row.inputs), report)
    now = utcnow()

    def mark(db: Connection) -> tuple[Any, ...] | None:
        done = db.execute(
            update(JOBS)
            .where(JOBS.c.id == job_id, JOBS.c.status.in_(_TERMINAL))
            .values(
                prompt="",
                images_purged_at=func.coalesce(JOBS.c.images_purged_at, now),
                prompt_redacted_at=func.coalesce(JOBS.c.prompt_redacted_at, now),
                updated_at=now,
            )
            .returning(JOBS.c.id)
        ).one_or_none()
        return tuple(done) if done is not None else None

    write(database_url, mark)
    report.jobs = report.image_jobs = report.prompts_redacted = 1
    log.info("retention.erased", job_id=str(job_id), images_deleted=report.images_deleted)
    return report
