"""Writes over a job's life. Every function takes the connection (or session) as ``db``.

The statements a job runs on every pass are built once, at import, with bind parameters:
building and cache-keying a fresh statement per call was most of a job's database CPU.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    String,
    Table,
    Uuid,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from models import (
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    AttemptOutcome,
    FalWebhook,
    Job,
    JobAttempt,
    JobStatus,
    UTCDateTime,
    utcnow,
)
from worker.constants import PARKED_FOR_WEBHOOK
from worker.errors import FalError, PolicyRefusal

#: Core tables: writes skip the ORM's bulk-update machinery (a large share of a job's CPU).
JOBS: Table = Job.__table__  # type: ignore[assignment]
ATTEMPTS: Table = JobAttempt.__table__  # type: ignore[assignment]
WEBHOOKS: Table = FalWebhook.__table__  # type: ignore[assignment]
#: "still open", as plain comparisons: ``in_()`` renders its list into the SQL on every call
_IS_OPEN = or_(*(JOBS.c.status == status for status in OPEN_STATUSES))

#: a transaction: a Connection in the worker's hot path, a Session elsewhere
Db = Connection | Session


@dataclass(frozen=True)
class JobSnapshot:
    """What a run needs to know about its job, read once when it claims it."""

    id: uuid.UUID
    prompt: str
    params: dict[str, Any]
    model: str
    attempts: int
    fal_request_id: str | None
    created_at: datetime
    deadline_at: datetime | None
    callback_url: str | None


_SNAPSHOT_COLUMNS = (
    JOBS.c.id,
    JOBS.c.prompt,
    JOBS.c.params,
    JOBS.c.model,
    JOBS.c.attempts,
    JOBS.c.fal_request_id,
    JOBS.c.created_at,
    JOBS.c.deadline_at,
    JOBS.c.callback_url,
)
_NOW = bindparam("now", type_=UTCDateTime())
_UNTIL = bindparam("until", type_=UTCDateTime())
_JOB = JOBS.c.id == bindparam("jid")
_OURS = and_(_JOB, JOBS.c.lease_owner == bindparam("owner"), JOBS.c.status == JobStatus.RUNNING)
_ATTEMPT = and_(ATTEMPTS.c.job_id == bindparam("jid"), ATTEMPTS.c.number == bindparam("num"))

#: what a claim writes: the job runs, leased to this run's owner until now + lease_s
_TAKE_LEASE: dict[str, Any] = {
    "status": JobStatus.RUNNING,
    "lease_owner": bindparam("owner"),
    "lease_until": _UNTIL,
    "started_at": func.coalesce(JOBS.c.started_at, _NOW),
    "updated_at": _NOW,
}
_CLAIM = (
    update(JOBS)
    .where(
        _JOB,
        or_(
            JOBS.c.status == JobStatus.QUEUED,
            and_(
                JOBS.c.status == JobStatus.RUNNING,
                or_(
                    JOBS.c.lease_until.is_(None),
                    JOBS.c.lease_until < _NOW,
                    JOBS.c.lease_owner == PARKED_FOR_WEBHOOK,
                ),
            ),
        ),
    )
    .values(**_TAKE_LEASE)
    .returning(*_SNAPSHOT_COLUMNS)
)


def claim(*, db: Db, job_id: uuid.UUID, owner: str, lease_s: float) -> JobSnapshot | None:
    """Take the job's lease and mark it running.

    None when the job is unknown, terminal, or running under another run's live lease
    (two runs never work on one job at the same time; the sweeper re-publishes the job if
    that run dies and its lease expires). A job parked for its webhook is claimable.
    """
    now = utcnow()
    until = now + timedelta(seconds=lease_s)
    params = {"jid": job_id, "owner": owner, "now": now, "until": until}
    row = db.execute(_CLAIM, params).one_or_none()
    return JobSnapshot(*row) if row is not None else None


_claimed_fresh = (
    update(JOBS)
    .where(
        _JOB,
        JOBS.c.status == JobStatus.QUEUED,
        JOBS.c.attempts == 0,
        JOBS.c.fal_request_id.is_(None),
        or_(JOBS.c.deadline_at.is_(None), JOBS.c.deadline_at > _NOW),
    )
    .values(**_TAKE_LEASE, attempts=1)
    .returning(*_SNAPSHOT_COLUMNS)
    .cte("claimed")
)
_CLAIM_FIRST_SUBMIT = select(*_claimed_fresh.c).add_cte(
    insert(ATTEMPTS)
    .from_select(
        ["job_id", "number", "outcome", "started_at"],
        select(
            _claimed_fresh.c.id,
            _claimed_fresh.c.attempts,
            literal(AttemptOutcome.SENDING.value, String()),
            _NOW,
        ),
    )
    .cte("opened")
)


def claim_first_submit(
    *, db: Db, job_id: uuid.UUID, owner: str, lease_s: float
) -> JobSnapshot | None:
    """Claim a never-submitted job and count its first submission, in one statement.

    For a run that already holds a fal slot and has nothing to check before the submit
    (no moderation). The attempt row reads 'sending' from here on, exactly as
    ``begin_attempt`` leaves it. The snapshot shows the job as before this submission
    (``attempts`` 0). None (nothing written) for any other job, and off Postgres: the
    run claims it the usual way.
    """
    if not _postgres(db):
        return None
    now = utcnow()
    until = now + timedelta(seconds=lease_s)
    params = {"jid": job_id, "owner": owner, "now": now, "until": until}
    row = db.execute(_CLAIM_FIRST_SUBMIT, params).one_or_none()
    return replace(JobSnapshot(*row), attempts=0) if row is not None else None


_RENEW = update(JOBS).where(_OURS).values(lease_until=_UNTIL, updated_at=_NOW)


def renew_lease(*, db: Db, job_id: uuid.UUID, owner: str, lease_s: float) -> bool:
    """Extend our lease; False when the job was cancelled, finished or taken over."""
    now = utcnow()
    until = now + timedelta(seconds=lease_s)
    params = {"jid": job_id, "owner": owner, "until": until, "now": now}
    return _changed(db.execute(_RENEW, params))


def release_for_retry(
    *, db: Db, job_id: uuid.UUID, owner: str, retry_at: datetime, grace_s: float
) -> None:
    """Back to ``queued`` while the Celery retry waits; swept if it never comes."""
    db.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.lease_owner == owner, JOBS.c.status == JobStatus.RUNNING)
        .values(
            status=JobStatus.QUEUED,
            lease_owner=None,
            lease_until=retry_at + timedelta(seconds=grace_s),
            updated_at=utcnow(),
        )
    )


_PARK = (
    update(JOBS)
    .where(
        _OURS,
        ~select(WEBHOOKS.c.request_id)
        .where(WEBHOOKS.c.request_id == bindparam("request_id"))
        .exists(),
    )
    .values(
        lease_owner=PARKED_FOR_WEBHOOK,
        lease_until=_UNTIL,
        updated_at=_NOW,
    )
)


def park_for_webhook(
    *, db: Db, job_id: uuid.UUID, owner: str, request_id: str, wait_s: float
) -> bool:
    """Hand the job to fal's callback: no run holds it until the webhook or ``wait_s``.

    False when the callback has already arrived: the run reads it instead. (The receiver
    stores the callback, then publishes a run; whichever comes second sees the other.)
    """
    now = utcnow()
    params = {
        "jid": job_id,
        "owner": owner,
        "request_id": request_id,
        "until": now + timedelta(seconds=wait_s),
        "now": now,
    }
    return _changed(db.execute(_PARK, params))


_WEBHOOK_BODY = select(WEBHOOKS.c.body).where(WEBHOOKS.c.request_id == bindparam("request_id"))


def webhook_body(*, db: Db, request_id: str) -> dict[str, Any] | None:
    """The verified callback fal sent for this request, if it came."""
    body = db.execute(_WEBHOOK_BODY, {"request_id": request_id}).scalar_one_or_none()
    return cast(dict[str, Any] | None, body)


def record_webhook(
    *, db: Db, request_id: str, body: dict[str, Any], job_hint: uuid.UUID | None
) -> tuple[uuid.UUID | None, bool]:
    """Keep a verified callback (redeliveries are no-ops): the open job it is for, if any,
    and whether this is its first delivery.

    The job is found by its fal request id; the callback URL's ``job_id`` hint covers the
    moment between fal's answer to the submit and the run recording the request id.
    """
    known = select(WEBHOOKS.c.request_id).where(WEBHOOKS.c.request_id == request_id)
    fresh = db.execute(known).first() is None
    if fresh:
        db.execute(
            insert(WEBHOOKS).values(
                request_id=request_id, job_id=job_hint, body=body, received_at=utcnow()
            )
        )
    open_job = _IS_OPEN
    job_id = db.execute(
        select(JOBS.c.id).where(JOBS.c.fal_request_id == request_id, open_job)
    ).scalar_one_or_none()
    if job_id is None and job_hint is not None:
        job_id = db.execute(
            select(JOBS.c.id).where(
                JOBS.c.id == job_hint, JOBS.c.fal_request_id.is_(None), open_job
            )
        ).scalar_one_or_none()
    return job_id, fresh


def purge_webhooks(*, db: Db, older_than: datetime) -> int:
    result = db.execute(delete(WEBHOOKS).where(WEBHOOKS.c.received_at < older_than))
    return int(cast(CursorResult[Any], result).rowcount)


_COUNT_SUBMISSION = (
    update(JOBS)
    .where(_JOB)
    .values(attempts=JOBS.c.attempts + 1, updated_at=_NOW)
    .returning(JOBS.c.attempts)
)
_OPEN_ATTEMPT = insert(ATTEMPTS).values(
    job_id=bindparam("jid"),
    number=bindparam("num"),
    outcome=AttemptOutcome.SENDING,
    started_at=_NOW,
)


_counted = _COUNT_SUBMISSION.cte("counted")
#: Postgres: count the submission and open its attempt row in one statement
_BEGIN_ATTEMPT = (
    insert(ATTEMPTS)
    .from_select(
        ["job_id", "number", "outcome", "started_at"],
        select(
            bindparam("jid", type_=Uuid()),
            _counted.c.attempts,
            literal(AttemptOutcome.SENDING.value, String()),
            _NOW,
        ),
    )
    .returning(ATTEMPTS.c.number)
)


def begin_attempt(*, db: Db, job_id: uuid.UUID) -> int:
    """Count one submission (before it is sent) and open its attempt row; returns its number."""
    params: dict[str, Any] = {"jid": job_id, "now": utcnow()}
    if _postgres(db):
        return int(db.execute(_BEGIN_ATTEMPT, params).scalar_one())
    number = int(db.execute(_COUNT_SUBMISSION, params).scalar_one())
    db.execute(_OPEN_ATTEMPT, {**params, "num": number})
    return number


def retract_attempt(*, db: Db, job_id: uuid.UUID, number: int) -> None:
    """The POST never left (connection refused): it is not a submission."""
    db.execute(delete(ATTEMPTS).where(ATTEMPTS.c.job_id == job_id, ATTEMPTS.c.number == number))
    db.execute(update(JOBS).where(JOBS.c.id == job_id).values(attempts=JOBS.c.attempts - 1))


_ATTEMPT_SUBMITTED = (
    update(ATTEMPTS)
    .where(_ATTEMPT)
    .values(fal_request_id=bindparam("request_id"), outcome=AttemptOutcome.SUBMITTED)
)
_JOB_SUBMITTED = (
    update(JOBS).where(_JOB).values(fal_request_id=bindparam("request_id"), updated_at=_NOW)
)


_SUBMITTED = _JOB_SUBMITTED.add_cte(_ATTEMPT_SUBMITTED.cte("attempt"))


def record_submitted(*, db: Db, job_id: uuid.UUID, number: int, request_id: str) -> None:
    params = {"jid": job_id, "num": number, "request_id": request_id, "now": utcnow()}
    if _postgres(db):
        db.execute(_SUBMITTED, params)
        return
    db.execute(_ATTEMPT_SUBMITTED, params)
    db.execute(_JOB_SUBMITTED, params)


def record_attempt_error(*, db: Db, job_id: uuid.UUID, number: int, error: FalError) -> None:
    """Close an attempt with what went wrong (fal's first ``detail`` entry included)."""
    if isinstance(error, PolicyRefusal):
        outcome = AttemptOutcome.REFUSED
    else:
        outcome = AttemptOutcome.TRANSIENT if error.retryable else AttemptOutcome.PERMANENT
    _update_attempt(
        db,
        job_id,
        number,
        outcome=outcome,
        finished_at=utcnow(),
        http_status=error.http_status,
        error_type=error.error_type or type(error).__name__,
        detail=_jsonable(error),
    )


def forget_request(*, db: Db, job_id: uuid.UUID) -> None:
    """fal's request ended in failure: the next run submits anew."""
    db.execute(update(JOBS).where(JOBS.c.id == job_id).values(fal_request_id=None))


_LATEST_ATTEMPT = (
    select(ATTEMPTS.c.number, ATTEMPTS.c.outcome)
    .where(ATTEMPTS.c.job_id == bindparam("jid"))
    .order_by(ATTEMPTS.c.number.desc())
    .limit(1)
)


def latest_attempt(*, db: Db, job_id: uuid.UUID) -> tuple[int, AttemptOutcome] | None:
    row = db.execute(_LATEST_ATTEMPT, {"jid": job_id}).one_or_none()
    return (row[0], row[1]) if row is not None else None


def mark_unknown(*, db: Db, job_id: uuid.UUID, number: int) -> None:
    """A previous run died mid-POST: nobody can tell whether fal received it."""
    _update_attempt(
        db,
        job_id,
        number,
        outcome=AttemptOutcome.UNKNOWN,
        finished_at=utcnow(),
        error_type="worker_lost",
        detail={"message": "the worker died while this submit was in flight"},
    )


_CLOSE_ATTEMPT = (
    update(ATTEMPTS).where(_ATTEMPT).values(outcome=bindparam("new_outcome"), finished_at=_NOW)
)


@lru_cache(maxsize=64)
def _finish_statement(columns: frozenset[str], close_attempt: bool) -> Any:
    statement = (
        update(JOBS)
        .where(_JOB, _IS_OPEN)
        .values(
            status=bindparam("new_status"),
            finished_at=_NOW,
            updated_at=_NOW,
            lease_owner=None,
            lease_until=None,
            **{column: bindparam(f"v_{column}") for column in sorted(columns)},
        )
    )
    return statement.add_cte(_CLOSE_ATTEMPT.cte("closed")) if close_attempt else statement


def finish(
    *,
    db: Db,
    job_id: uuid.UUID,
    status: JobStatus,
    attempt: tuple[int | None, AttemptOutcome] | None = None,
    **values: Any,
) -> bool:
    """Move an open job to a terminal status; False if it was already terminal.

    ``attempt``: (number, outcome) of the attempt row to close as well (None: no attempt).
    """
    assert status in TERMINAL_STATUSES
    params = {"jid": job_id, "new_status": status, "now": utcnow()}
    params.update({f"v_{column}": value for column, value in values.items()})
    number, outcome = attempt if attempt is not None else (None, None)
    together = number is not None and _postgres(db)
    if number is not None:
        params.update({"num": number, "new_outcome": outcome})
        if not together:
            db.execute(_CLOSE_ATTEMPT, params)
    return _changed(db.execute(_finish_statement(frozenset(values), together), params))


def _postgres(db: Db) -> bool:
    """Postgres runs data-modifying CTEs: two writes in one statement, one round trip."""
    dialect = db.dialect if isinstance(db, Connection) else db.get_bind().dialect
    return dialect.name == "postgresql"


def _update_attempt(db: Db, job_id: uuid.UUID, number: int, **values: Any) -> None:
    db.execute(
        update(ATTEMPTS)
        .where(ATTEMPTS.c.job_id == job_id, ATTEMPTS.c.number == number)
        .values(**values)
    )


def _changed(result: Any) -> bool:
    return bool(cast(CursorResult[Any], result).rowcount)


def _jsonable(error: FalError) -> Any:
    detail = error.detail
    base = {"message": error.message}
    if detail is None:
        return base
    if isinstance(detail, dict | list | str | int | float | bool):
        return {**base, "fal": detail}
    return {**base, "fal": repr(detail)}
