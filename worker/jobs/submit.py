"""The submit stage: claim → pre-filter → fal slot → count the attempt → POST → at_fal.

It holds its thread for one POST, never for the generation. Every way out is one move of
the row (``worker.jobs.state``): at_fal with the request id (persisted before anything
waits on it), back to queued (no slot yet, or a transient error: the task runs again),
or terminal.

One rule for "fal may have created this request but we never heard its id" (a worker
killed mid-POST, found when the job is claimed again; or a POST that was sent and got no
answer): the attempt is recorded ``unknown`` and, by default, the job fails saying so;
with IMAGEGEN_RESUBMIT_UNKNOWN=true it is sent again (counted, possibly billed twice).
fal's submit has no idempotency key, so nothing else can tell.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from imagegen.models import AttemptOutcome, JobStatus, utcnow
from imagegen.worker import metrics
from imagegen.worker.db import write
from imagegen.worker.errors import (
    FalError,
    MediaError,
    PermanentFalError,
    PolicyRefusal,
    TransientFalError,
)
from imagegen.worker.jobs import attempts, state
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.jobs.outcome import CANCELLED, SKIPPED, Outcome
from imagegen.worker.jobs.settle import Settle
from imagegen.worker.logs import get_logger
from imagegen.worker.moderation import CELEBRITY_LIKENESS, ModerationUnavailable

log = get_logger(__name__)
UNKNOWN_MESSAGE = (
    "the submit to fal may have reached it but no answer came (a worker died mid-submit, "
    "or the answer was lost); it was not sent again to avoid paying twice (enqueue it "
    "again, or set IMAGEGEN_RESUBMIT_UNKNOWN=true)"
)


class _Hooks:
    """Writes the attempt row as the POST leaves (``worker.fal.gateway.SubmitHooks``)."""

    def __init__(self, database_url: str, job_id: uuid.UUID) -> None:
        self._url, self._job_id = database_url, job_id
        self.number: int | None = None
        self.sent = False

    def sending(self) -> None:
        metrics.SUBMISSIONS.inc()
        self.number = write(self._url, lambda db: attempts.begin(db, self._job_id))
        self.sent = True

    def not_sent(self) -> None:
        number, self.sent = self.number, False
        if number is not None:
            write(self._url, lambda db: attempts.retract(db, self._job_id, number))
            self.number = None


def run(job_id: uuid.UUID, deps: Deps, *, retries: int = 0) -> Outcome:
    """Take the job from queued to at_fal (or to its end); see the module docstring."""
    owner = uuid.uuid4().hex

    def take(db: Connection) -> tuple[state.Moved | None, Any]:
        # IMAGEGEN_LEASE_S: one POST (its timeout) and the writes around it, at most
        moved = state.move(db, job_id, "claim", owner=owner, lease_s=deps.settings.lease_s)
        if moved is None or moved.job.attempts == 0:
            return moved, None
        return moved, attempts.latest(db, job_id)

    moved, latest = write(deps.settings.database_url, take)
    if moved is None:
        return _not_ours(deps, job_id)
    settle = Settle(deps, moved.job, owner)
    try:
        if latest is not None and latest[1] is AttemptOutcome.SENDING:
            return _orphaned(settle, latest[0])
        return _submit(settle)
    except PolicyRefusal as refusal:
        return settle.refused(refusal)
    except FalError as error:
        # submissions count against IMAGEGEN_MAX_ATTEMPTS; before any, this task's runs do
        return settle.failed_or_retry(
            error, tries=settle.number or max(settle.job.attempts, retries + 1)
        )
    finally:
        if not settle.at_fal:
            settle.free_slot()


def _not_ours(deps: Deps, job_id: uuid.UUID) -> Outcome:
    status = state.status_of(deps.settings.database_url, job_id)
    return CANCELLED if status is JobStatus.CANCELLED else SKIPPED


def _submit(settle: Settle) -> Outcome:
    deps, job = settle.deps, settle.job
    if job.overdue:
        return settle.fail("the job's deadline passed before it was submitted")
    if job.attempts >= deps.settings.max_attempts:
        raise PermanentFalError(
            f"not submitted again: {job.attempts} submissions already "
            f"(IMAGEGEN_MAX_ATTEMPTS={deps.settings.max_attempts})"
        )
    admission = deps.limiter.admit(str(job.id), deps.guard)
    if admission.locked is not None:
        return settle.fail(f"not submitted: fal locked the account ({admission.locked})")
    if admission.cool_s > 0:  # after a 429: no worker submits before the cool-down ends
        return settle.requeue(admission.cool_s, "fal asked us to slow down (429): cooling down")
    if not admission.admitted:  # the fleet is at its cap: a freed slot is granted fairly
        return settle.park()
    settle.holds_slot = True
    if job.attempts == 0:  # after the slot: a job waiting for one is not checked again
        _prefilter(deps, job)
    return _post(settle)


def _post(settle: Settle) -> Outcome:
    deps, job = settle.deps, settle.job
    hooks = _Hooks(deps.settings.database_url, job.id)
    arguments: dict[str, Any] = {"prompt": job.prompt, **job.params}
    if job.inputs:
        arguments.update(_fal_inputs(deps, job))
    webhook = deps.settings.webhook_url
    if webhook is not None:  # the job id is only a hint; fal signs the rest
        webhook += f"{'&' if '?' in webhook else '?'}job_id={job.id}"
    try:
        request_id = deps.gateway.submit(job.model, arguments, hooks, webhook)
    except FalError as error:
        settle.number = hooks.number
        if hooks.sent and error.http_status is None and isinstance(error, TransientFalError):
            return _unknown(settle, hooks.number)  # sent, and no answer: fal may have it
        raise
    settle.number = hooks.number
    return _at_fal(settle, request_id)


def _at_fal(settle: Settle, request_id: str) -> Outcome:
    deps, job, number = settle.deps, settle.job, settle.number
    assert number is not None
    now = utcnow()
    first_s = (
        deps.settings.webhook_fallback_s
        if deps.settings.webhook_url is not None
        else deps.settings.poll_initial_s
    )
    poll_at = now + timedelta(seconds=first_s)
    if job.deadline_at is not None:
        poll_at = min(poll_at, job.deadline_at)
    values = {"fal_request_id": request_id, "submitted_at": now, "poll_at": poll_at}

    def record(db: Connection) -> state.Moved | None:
        moved = state.move(db, job.id, "submitted", owner=settle.owner, values=values, now=now)
        attempts.submitted(db, job.id, number, request_id)
        if moved is None:  # cancelled (or expired) while the POST was out
            attempts.close(db, job.id, number, AttemptOutcome.CANCELLED)
        return moved

    moved = write(deps.settings.database_url, record)
    if moved is None:  # cancelled (or expired) while the POST was out: stop it at fal
        settle.request_id = request_id
        settle.cancel_at_fal()
        return _not_ours(deps, job.id)
    settle.at_fal = True
    fire(moved, deps.app)
    if deps.settings.webhook_url is not None:
        settle.webhook_already_came(request_id)
    return Outcome(f"at_fal:{request_id} since {now.isoformat(timespec='seconds')}")


def _fal_inputs(deps: Deps, job: state.JobRow) -> dict[str, Any]:
    """The edit job's stored inputs as URLs fal can read (before the POST: nothing sent)."""
    from imagegen.worker.media.inputs import fal_inputs
    from imagegen.worker.media.setup import storage_for

    try:
        return fal_inputs(
            job.inputs or [],
            settings=deps.settings,
            storage=deps.storage or storage_for(deps.settings.storage_url),
            upload=deps.gateway.upload,
        )
    except MediaError as error:
        raise TransientFalError(f"the input images could not be handed to fal: {error}") from None


def _prefilter(deps: Deps, job: state.JobRow) -> None:
    """Our moderation step, before the first (billable) submit; raises its refusal."""
    chain = deps.moderation
    if chain is None:
        return
    try:
        verdict = chain.check(job.prompt)
    except ModerationUnavailable as exc:
        raise TransientFalError(f"the moderation service is unavailable ({exc.reason})") from None
    if verdict.refused and _consented(job, verdict.category):
        log.info("prefilter.consented", job_id=str(job.id), category=verdict.category)
    elif verdict.refused:
        raise PolicyRefusal(
            verdict.category or "unspecified",
            verdict.message or "This prompt was refused before generation.",
            soft=verdict.soft,
            source="prefilter",
            checker=verdict.source,
        )


def _consented(job: state.JobRow, category: str | None) -> bool:
    """A likeness block is fal's to decide when the job carries a consent reference."""
    has_consent = any(i.get("role") == "consent" for i in job.inputs or [])
    return has_consent and category == CELEBRITY_LIKENESS


def _orphaned(settle: Settle, number: int) -> Outcome:
    """A submit task died between counting its POST and hearing fal's answer."""
    log.warning("job.submit_outcome_unknown", job_id=str(settle.job.id), attempt=number)
    return _unknown(settle, number)


def _unknown(settle: Settle, number: int | None) -> Outcome:
    deps = settle.deps
    settle.cost = {"possibly_billed": True}  # fal may have created it: spend's upper bound
    if number is not None:
        write(
            deps.settings.database_url,
            lambda db: attempts.close(
                db,
                settle.job.id,
                number,
                AttemptOutcome.UNKNOWN,
                error_type="submit_outcome_unknown",
                detail={"message": "no answer to this submit: it may have reached fal"},
            ),
        )
    if deps.settings.resubmit_unknown:
        return settle.requeue(0.0, "resubmitting after an unknown submit outcome")
    settle.number = None  # closed above, as unknown
    return settle.fail(UNKNOWN_MESSAGE)
