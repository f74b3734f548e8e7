"""fal's verified callbacks (webhook mode), kept until the job's collect reads them.

Keyed by fal's request id, so fal's redeliveries (it retries for two hours) are no-ops;
purged by the sweeper once their job is terminal.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table, delete, insert, select

from imagegen.models import OPEN_STATUSES, TERMINAL_STATUSES, FalWebhook, Job, utcnow

JOBS: Table = Job.__table__  # type: ignore[assignment]
WEBHOOKS: Table = FalWebhook.__table__  # type: ignore[assignment]
_OPEN = JOBS.c.status.in_(OPEN_STATUSES)


def record(
    db: Connection, request_id: str, body: dict[str, Any], job_hint: uuid.UUID | None
) -> tuple[uuid.UUID | None, bool]:
    """Keep a verified callback: the open job it is for (if any), and whether this is its
    first delivery. The job is found by request id; the callback URL's ``job_id`` hint
    covers the moment between fal's answer to the submit and the request id's write."""
    known = select(WEBHOOKS.c.request_id).where(WEBHOOKS.c.request_id == request_id)
    fresh = db.execute(known).first() is None
    if fresh:
        db.execute(
            insert(WEBHOOKS).values(
                request_id=request_id, job_id=job_hint, body=body, received_at=utcnow()
            )
        )
    by_request = select(JOBS.c.id).where(JOBS.c.fal_request_id == request_id, _OPEN)
    job_id = db.execute(by_request).scalar_one_or_none()
    if job_id is None and job_hint is not None:
        by_hint = select(JOBS.c.id).where(
            JOBS.c.id == job_hint, JOBS.c.fal_request_id.is_(None), _OPEN
        )
        job_id = db.execute(by_hint).scalar_one_or_none()
    return job_id, fresh


def body(db: Connection, request_id: str) -> dict[str, Any] | None:
    query = select(WEBHOOKS.c.body).where(WEBHOOKS.c.request_id == request_id)
    return cast(dict[str, Any] | None, db.execute(query).scalar_one_or_none())


def purge_terminal(db: Connection, limit: int) -> int:
    """Delete up to ``limit`` stored callbacks whose job is terminal (or, after a day, whose
    request no job has: a request replaced by a resubmit, a callback for another app)."""
    stale = utcnow() - timedelta(days=1)
    done = (
        select(WEBHOOKS.c.request_id)
        .outerjoin(JOBS, JOBS.c.fal_request_id == WEBHOOKS.c.request_id)
        .where(
            JOBS.c.status.in_(TERMINAL_STATUSES)
            | (JOBS.c.id.is_(None) & (WEBHOOKS.c.received_at < stale))
        )
        .limit(limit)
    )
    ids = list(db.execute(done).scalars())
    if not ids:
        return 0
    result = db.execute(delete(WEBHOOKS).where(WEBHOOKS.c.request_id.in_(ids)))
    return int(cast(CursorResult[Any], result).rowcount)
