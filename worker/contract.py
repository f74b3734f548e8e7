"""The JSON contract of the HTTP API: response bodies, shared by the API and its client.

FastAPI publishes these in ``/openapi.json``; ``worker.client`` parses answers with them.
Pydantic only (no FastAPI, SQLAlchemy or Celery), so a web app can use the client without
the worker's services. ``worker.jobs.queries.job_to_dict`` builds the ``Job`` shape that the
CLI's ``--json``, the API and job callbacks all send.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal[
    "queued",
    "waiting",
    "submitting",
    "at_fal",
    "collecting",
    "storing",
    "succeeded",
    "refused",
    "failed",
    "cancelled",
]
Outcome = Literal[
    "sending", "submitted", "succeeded", "refused", "transient", "permanent", "cancelled", "unknown"
]


class Image(BaseModel):
    """One generated image: our stored copy (when stored) and fal's original.

    fal may add fields: they are kept."""

    model_config = ConfigDict(extra="allow")

    url: str = Field(
        description="Where to get the image: the stored copy (a presigned URL for S3, "
        "/jobs/{id}/images/{n} for local storage) when stored, else fal's URL."
    )
    fal_url: str | None = Field(None, description="fal's URL (public, expires on fal's side).")
    storage_key: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


class InputImage(BaseModel):
    """An edit job's input: an image, the mask, or the consent reference, as stored."""

    role: Literal["image", "mask", "consent"]
    storage_key: str
    sha256: str
    bytes: int
    content_type: str
    width: int
    height: int
    source_url: str | None = Field(None, description="Where it was fetched from (URL inputs).")


class Attempt(BaseModel):
    """One submission to fal."""

    number: int
    outcome: Outcome
    fal_request_id: str | None
    http_status: int | None
    error_type: str | None
    detail: Any = Field(description="What fal answered, when it failed.")
    started_at: datetime
    finished_at: datetime | None


class Job(BaseModel):
    """A job: every column of its row. ``images`` is ``[]`` until it succeeded."""

    id: str
    tenant_id: str | None = Field(None, description="The tenant that owns the job.")
    tenant: str = Field("default", description="Its name (not a column: tenants.name).")
    end_user: str | None = Field(None, description="The caller's user id, as given.")
    status: Status
    prompt: str
    params: dict[str, Any] = Field(description="What fal is sent: image_size, quality, ...")
    model: str
    refusal_category: str | None
    refusal_source: Literal["fal", "prefilter"] | None
    refusal_message: str | None
    error: str | None
    attempts: int = Field(description="Submissions to fal so far.")
    fal_request_id: str | None
    images: list[Image]
    images_stored: bool | None = Field(
        None, description="succeeded: copied to storage (false: storage_error says why)."
    )
    storage_error: str | None = None
    inputs: list[InputImage] = Field(default_factory=list, description="Edit jobs' inputs.")
    images_purged_at: datetime | None = Field(None, description="Images deleted (retention).")
    prompt_redacted_at: datetime | None = Field(None, description="Prompt removed (retention).")
    estimated_cost_usd: Decimal | None = Field(
        None, description="By the price table at enqueue (an estimate; a decimal string)."
    )
    billable_units: Decimal | None = Field(
        None, description="fal's x-fal-billable-units of the result (null: not known)."
    )
    billed_cost_usd: Decimal | None = Field(
        None, description="billable_units x fal's unit price (null: not known)."
    )
    possibly_billed: bool = Field(
        False, description="A submit's answer was lost: fal may have billed it (not known)."
    )
    idempotency_key: str | None
    callback_url: str | None
    retry_of: str | None = Field(description="The failed job this one retries (imagegen retry).")
    deadline_at: datetime | None = Field(description="Failed with a timeout if not done by then.")
    lease_owner: str | None = Field(description="The stage task holding it (internal).")
    lease_until: datetime | None = Field(description="That task's lease (internal).")
    slot_granted_at: datetime | None = Field(
        None, description="queued: when a fal slot was kept for it (fair share, internal)."
    )
    created_at: datetime
    started_at: datetime | None
    submitted_at: datetime | None = Field(description="at_fal: since when fal has the request.")
    poll_at: datetime | None = Field(description="at_fal: when it is next checked (internal).")
    finished_at: datetime | None
    updated_at: datetime


class JobDetail(Job):
    """A job with its attempt log (``GET /jobs/{id}``)."""

    attempt_log: list[Attempt]


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null on the last page."
    )


class JobCreated(BaseModel):
    id: str
    status: Status


class Cancelled(BaseModel):
    id: str
    status: Literal["cancelled"]


class Stats(BaseModel):
    total: int
    by_status: dict[Status, int]
    by_refusal_category: dict[str, int] = Field(description="Most frequent first.")
    by_refusal_source: dict[str, dict[str, int]] = Field(
        description="fal's own refusals and the pre-filter's, by category."
    )
    fal_submissions: int


class TenantStats(BaseModel):
    """One tenant's jobs, refusals and spend (``GET /stats/tenants``)."""

    tenant: str
    jobs: int
    refused: int
    refusals_by_category: dict[str, int]
    billed_usd: str = Field(description="What fal billed, where known (a decimal string).")
    spend_upper_bound_usd: str = Field(
        description="Plus the estimate of jobs that may have been billed without a known bill."
    )
    possibly_billed: int = Field(description="Jobs whose submit's answer was lost.")
    cooldowns_started: int = Field(
        0, description="Repeat-offender cool-downs started (in the window, with since)."
    )
    cooling_down: int = Field(0, description="Its end users (or itself) cooling down now.")


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="unavailable (503): the database or broker does not answer; degraded "
        "(200): no worker consumes the job queue, so jobs wait."
    )
    database: str
    broker: str
    workers: str = Field(description='"ok (N)" or why no worker consumes the job queue.')


class Problem(BaseModel):
    field: str = Field(
        description="The input at fault: a body field or query parameter, `body` (the body "
        "as a whole: not JSON, not an object) or `Idempotency-Key` (used with other input)."
    )
    message: str


class ValidationErrorBody(BaseModel):
    """422: the request was invalid; nothing was written."""

    detail: list[Problem]


class ErrorBody(BaseModel):
    """Every other error: one line saying what is wrong and what to do."""

    detail: str
