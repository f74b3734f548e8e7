"""The collect stage: fal finished the request; read its answer and record the outcome.

Published by whoever heard COMPLETED (poller, fal's webhook, the sweeper), after the row
moved at_fal → collecting. The answer is fal's stored webhook body when one came, else one
GET of the result. A transient failure to read it retries the collect (never a second
submission); fal's request itself having failed is resubmitted, counted like any other.
"""

from __future__ import annotations

import uuid
from typing import Any

from imagegen.models import AttemptOutcome, JobStatus
from imagegen.worker.cost.record import bill
from imagegen.worker.db import write
from imagegen.worker.errors import (
    FalError,
    PermanentFalError,
    PolicyRefusal,
    RequestCancelled,
    TransientFalError,
)
from imagegen.worker.fal import webhook_store
from imagegen.worker.fal import webhooks as fal_webhook
from imagegen.worker.fal.gateway import FalResult
from imagegen.worker.jobs import state
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.jobs.dispatch import send_submit
from imagegen.worker.jobs.outcome import CANCELLED, SKIPPED, Outcome
from imagegen.worker.jobs.retry import GiveUp
from imagegen.worker.jobs.settle import Settle
from imagegen.worker.logs import get_logger

log = get_logger(__name__)


def run(job_id: uuid.UUID, deps: Deps, *, retries: int = 0) -> Outcome:
    owner = uuid.uuid4().hex
    lease_s = deps.settings.lease_s  # one result GET and the image checks, at most
    moved = write(
        deps.settings.database_url,
        lambda db: state.move(db, job_id, "collect", owner=owner, lease_s=lease_s),
    )
    if moved is None:
        status = state.status_of(deps.settings.database_url, job_id)
        return CANCELLED if status is JobStatus.CANCELLED else SKIPPED
    settle = Settle(deps, moved.job, owner, number=moved.job.attempts or None)
    request_id = moved.job.fal_request_id
    if request_id is None:  # collecting always has one; a row edited by hand might not
        return settle.fail("collecting a job that has no fal request id")
    try:
        images = _images(deps, settle, request_id)
        if deps.storage is not None:  # the store stage copies them, then ends the job
            return settle.collected(images)
        return settle.succeed(images)
    except PolicyRefusal as refusal:
        settle.cost = bill(deps.settings, moved.job.model, refusal.billable_units)
        return settle.refused(refusal)
    except RequestCancelled:
        return settle.fail("fal reports the request cancelled", AttemptOutcome.CANCELLED)
    except FalError as error:
        settle.cost = bill(deps.settings, moved.job.model, error.billable_units)
        return _failed(settle, error, retries)


def _images(deps: Deps, settle: Settle, request_id: str) -> list[dict[str, Any]]:
    """fal's images; ``settle.cost`` gets the bill (webhook mode: units not known)."""
    output = _from_webhook(deps, request_id)
    if output is None:
        result = _fetch(deps, settle.job.model, request_id)
        settle.cost = bill(deps.settings, settle.job.model, result.billable_units)
        output = result.output
    images = output.get("images")
    if not isinstance(images, list) or not images:
        raise PermanentFalError("fal completed the request but returned no images")
    if not all(isinstance(i, dict) and isinstance(i.get("url"), str) for i in images):
        raise PermanentFalError("fal returned images without URLs")
    if deps.settings.verify_images and deps.storage is None:  # the store stage checks them
        deps.gateway.check_images(images)
    return images


def _from_webhook(deps: Deps, request_id: str) -> dict[str, Any] | None:
    """fal's verified callback, when it came (webhook mode); None: read the result."""
    if deps.settings.webhook_url is None:
        return None
    body = write(deps.settings.database_url, lambda db: webhook_store.body(db, request_id))
    if body is None:
        return None
    result = fal_webhook.outcome(body)
    if isinstance(result, TransientFalError):
        result.resubmit = True  # the callback is final: this request failed at fal
    if isinstance(result, FalError):
        raise result
    return result  # None: fal could not serialise the output, read it once


def _fetch(deps: Deps, model: str, request_id: str) -> FalResult:
    try:
        return deps.gateway.result_with_units(model, request_id)
    except TransientFalError as error:
        # fal's own error type means the request itself failed: submit anew
        error.resubmit = error.resubmit or error.error_type is not None
        raise


def _failed(settle: Settle, error: FalError, retries: int) -> Outcome:
    resubmit = isinstance(error, TransientFalError) and error.resubmit
    if not resubmit and isinstance(error, TransientFalError):
        # the answer could not be read: read it again later (counts this task's runs)
        decision = settle.deps.policy.decide(error, retries + 1)
        if isinstance(decision, GiveUp):
            return settle.fail(
                f"{error.message} (fal's answer could not be read: {decision.reason})"
            )
        return settle.release(decision.delay_s, error.message)
    if not resubmit:
        return settle.failed_or_retry(error, tries=settle.job.attempts)
    outcome = settle.failed_or_retry(error, tries=settle.job.attempts, forget_request=True)
    if outcome.retry_in is not None:  # requeued for a new submission
        send_submit(settle.deps.app, settle.job.id, settle.job.attempts, outcome.retry_in)
        return Outcome(f"resubmitting: {error.message}")
    return outcome
