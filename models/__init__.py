"""The job table and its attempts: the source of truth for every job's outcome."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

# the shared column types and helpers live in models.base (models.tenants needs them too);
# re-exported here so ``from imagegen.models import Base, utcnow`` keeps working
from .base import Base, JSONType, UTCDateTime, _enum, _not_null, utcnow
from .deliveries import CallbackDelivery
from .rollups import JobHour
from .tenants import DEFAULT_TENANT_ID, Cooldown, Tenant, TenantKey


class JobStatus(enum.StrEnum):
    """Where a job is: a state of the machine in ``worker.jobs.state``. The last four are
    terminal."""

    QUEUED = "queued"  # waiting for a submit task
    WAITING = "waiting"  # the fleet is at its cap: waits for a slot (``worker.jobs.fairshare``)
    SUBMITTING = "submitting"  # a submit task holds it (lease): pre-filter, slot, POST
    AT_FAL = "at_fal"  # fal has the request (fal_request_id); checked again at poll_at
    COLLECTING = "collecting"  # fal finished it: a collect task reads the result (lease)
    STORING = "storing"  # fal answered with images: a store task copies them (lease)
    SUCCEEDED = "succeeded"
    REFUSED = "refused"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.REFUSED, JobStatus.FAILED, JobStatus.CANCELLED}
)
#: not terminal yet (as a tuple: SQL ``IN`` lists keep their order)
OPEN_STATUSES = (
    JobStatus.QUEUED,
    JobStatus.WAITING,
    JobStatus.SUBMITTING,
    JobStatus.AT_FAL,
    JobStatus.COLLECTING,
    JobStatus.STORING,
)
#: a request is (or may be) at fal: what ``running`` meant before the stages were named
IN_PROGRESS_STATUSES = (JobStatus.SUBMITTING, JobStatus.AT_FAL, JobStatus.COLLECTING)


class AttemptOutcome(enum.StrEnum):
    """What one submission to fal came to."""

    SENDING = "sending"  # the POST is on its way (or the worker died while it was)
    SUBMITTED = "submitted"  # fal accepted it and gave a request id
    SUCCEEDED = "succeeded"
    REFUSED = "refused"
    TRANSIENT = "transient"  # failed in a way that may pass; the job was retried or gave up
    PERMANENT = "permanent"  # failed for good
    CANCELLED = "cancelled"
    #: the worker died while this POST was in flight: it may or may not have reached fal
    UNKNOWN = "unknown"


class Job(Base):
    """One image-generation request and its outcome."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: whose job it is; the server default (the default tenant) keeps writers that predate
    #: tenants working (32 hex digits: how a UUID is written on Postgres and SQLite alike).
    #: No Python default: an insert that does not name it works on an older schema too.
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tenants.id"), server_default=text(f"'{DEFAULT_TENANT_ID.hex}'")
    )
    #: the web app's own user id (per-user limits); never interpreted
    end_user: Mapped[str | None] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"))
    refusal_category: Mapped[str | None] = mapped_column(String(100))
    refusal_message: Mapped[str | None] = mapped_column(Text)
    #: who refused: ``fal``, or ``prefilter`` (our moderation step; nothing was sent to fal)
    refusal_source: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    fal_request_id: Mapped[str | None] = mapped_column(String(100))
    #: per image: ``url`` (fal's), and once stored ``storage_key``, ``sha256``, ``bytes``,
    #: ``content_type``, ``width``, ``height``
    images: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    #: succeeded: were the images copied to our storage (False: ``storage_error`` says why)
    images_stored: Mapped[bool | None] = mapped_column(Boolean)
    storage_error: Mapped[str | None] = mapped_column(Text)
    #: an edit job's input images as stored: ``role`` (image, mask, consent), ``storage_key``, ...
    inputs: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    images_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    prompt_redacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: cost (migration 0012 says what each means; NULL: not known)
    estimated_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    billable_units: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    billed_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    possibly_billed: Mapped[bool] = mapped_column(Boolean, server_default=false())
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    #: the web app's URL that gets the job's JSON (HMAC-signed) when it ends
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    #: the failed job this one is a new attempt of (``imagegen retry``); one retry per job
    retry_of: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    #: submitting / collecting: until when the task holding ``lease_owner`` may work on it
    #: undisturbed; queued: after when the sweeper considers the job's broker message lost.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    #: queued: a fal slot was kept for it at this time (waiting -> queued, the fair share)
    slot_granted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: after this the job ends ``failed`` with a timeout error, wherever it is.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: at_fal: since when fal has the current request, and when it is next checked
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, server_default=func.now()
    )

    attempt_rows: Mapped[list[JobAttempt]] = relationship(
        back_populates="job", order_by="JobAttempt.number", passive_deletes=True
    )
    #: loaded on first use only (the stages never read it); a many-to-one from the identity map
    tenant: Mapped[Tenant] = relationship()

    __table_args__ = (
        Index(None, "status", "created_at"),
        Index(None, "refusal_category", "created_at", **_not_null("refusal_category")),
        Index(None, "created_at"),
        Index(None, "tenant_id", "created_at"),  # a tenant's own listing, newest first
        Index(None, "end_user", "created_at", **_not_null("end_user")),
        Index(None, "status", "lease_until"),
        Index(None, "fal_request_id", **_not_null("fal_request_id")),
        Index(  # per tenant: another tenant's key neither conflicts nor reveals its job
            "uq_jobs_idempotency_key",
            "tenant_id",
            "idempotency_key",
            unique=True,
            **_not_null("idempotency_key"),
        ),
        Index("uq_jobs_retry_of", "retry_of", unique=True, **_not_null("retry_of")),
        Index(  # the fair share: a tenant's oldest job waiting for a fal slot
            "ix_jobs_waiting",
            "tenant_id",
            "created_at",
            postgresql_where=text("status = 'waiting'"),
            sqlite_where=text("status = 'waiting'"),
        ),
        Index(  # the fair share: what each tenant holds of the fleet cap
            "ix_jobs_holding",
            "tenant_id",
            "status",
            postgresql_where=text("status IN ('queued', 'submitting', 'at_fal')"),
            sqlite_where=text("status IN ('queued', 'submitting', 'at_fal')"),
        ),
        Index(
            "ix_jobs_poll_at_at_fal",
            "poll_at",
            postgresql_where=text("status = 'at_fal'"),
            sqlite_where=text("status = 'at_fal'"),
        ),
    )


class JobAttempt(Base):
    """One submission to fal for a job: every POST that left the worker, whatever came back."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    fal_request_id: Mapped[str | None] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[AttemptOutcome] = mapped_column(_enum(AttemptOutcome, "attempt_outcome"))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(100))
    detail: Mapped[Any | None] = mapped_column(JSONType)

    job: Mapped[Job] = relationship(back_populates="attempt_rows")

    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_job_attempts_job_number"),)


class FalWebhook(Base):
    """A verified callback from fal (webhook mode), kept until the job's run reads it.

    Keyed by fal's request id, so fal's redeliveries (it retries for two hours) are
    idempotent; ``job_id`` is only the hint the callback URL carried.
    """

    __tablename__ = "fal_webhooks"

    request_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    #: fal's JSON: ``status`` OK/ERROR, ``payload`` (the model output or error body), ...
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


__all__ = [
    "DEFAULT_TENANT_ID",
    "IN_PROGRESS_STATUSES",
    "OPEN_STATUSES",
    "TERMINAL_STATUSES",
    "AttemptOutcome",
    "Base",
    "CallbackDelivery",
    "Cooldown",
    "FalWebhook",
    "JSONType",
    "Job",
    "JobAttempt",
    "JobHour",
    "JobStatus",
    "Tenant",
    "TenantKey",
    "UTCDateTime",
    "utcnow",
]


class JobCount(Base):
    """Running totals behind ``imagegen stats`` on Postgres, kept by triggers (migration 0006).

    ``key`` is a terminal status (then ``n`` counts jobs in it, by refusal category and
    source, '' for none) or ``fal_submissions`` (attempt rows). Each total is spread over a
    few ``shard`` rows so that concurrent writers rarely wait on one row; a total is the sum
    over its shards. Open jobs (queued, running) are counted live: there are few.
    """

    __tablename__ = "job_counts"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    refusal_category: Mapped[str] = mapped_column(String(100), primary_key=True)
    refusal_source: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
