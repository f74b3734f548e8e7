"""How a stage run ends: each way out is one move of the row, plus what goes with it
(the attempt row closed, the fal slot given back, fal told to stop, hooks fired)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from imagegen.models import AttemptOutcome, JobStatus, utcnow
from imagegen.worker import metrics
from imagegen.worker.db import write
from imagegen.worker.errors import AccountLocked, FalError, PolicyRefusal
from imagegen.worker.jobs import attempts, fairshare, state
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.jobs.outcome import CANCELLED, SKIPPED, Outcome
from imagegen.worker.jobs.retry import GiveUp
from imagegen.worker.logs import get_logger
from imagegen.worker.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE

log = get_logger(__name__)


@dataclass
class Settle:
    deps: Deps
    job: state.JobRow
    owner: str
    #: the attempt row this run opened (or resumed): closed with the outcome
    number: int | None = None
    holds_slot: bool = False
    at_fal: bool = False
    request_id: str | None = None
    #: cost columns for the move that ends this run (``worker.cost.record``)
    cost: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.request_id = self.job.fal_request_id

    def _end(
        self,
        name: str,
        outcome: AttemptOutcome,
        attempt_error: FalError | None = None,
        **values: Any,
    ) -> state.Moved | None:
        number = self.number
        values = {**self.cost, **values}

        def work(db: Connection) -> state.Moved | None:
            moved = state.move(db, self.job.id, name, owner=self.owner, values=values)
            if moved is not None and number is not None:
                attempts.close(db, self.job.id, number, outcome, attempt_error)
            return moved

        moved = write(self.deps.settings.database_url, work)
        if moved is not None:
            fire(moved, self.deps.app)
        return moved

    def _ended(self, moved: state.Moved | None, outcome: Outcome) -> Outcome:
        if moved is not None:
            return outcome
        # someone else moved the job first (a cancel, the sweeper): nothing of ours to do
        status = state.status_of(self.deps.settings.database_url, self.job.id)
        if status is not JobStatus.CANCELLED:
            return SKIPPED
        self.cancel_at_fal()
        return CANCELLED

    def refused(self, refusal: PolicyRefusal) -> Outcome:
        moved = self._end(
            "refuse",
            AttemptOutcome.REFUSED,
            refusal,
            refusal_category=refusal.category,
            refusal_message=refusal.message,
            refusal_source=refusal.source,
        )
        log.info(
            "job.refused_by", job_id=str(self.job.id), checker=refusal.checker, soft=refusal.soft
        )
        return self._ended(moved, Outcome(f"refused:{refusal.category}"))

    def fail(self, message: str, outcome: AttemptOutcome = AttemptOutcome.PERMANENT) -> Outcome:
        self.cancel_at_fal()
        moved = self._end("fail", outcome, error=message)
        return self._ended(moved, Outcome("failed", reason=message))

    def succeed(self, images: list[dict[str, Any]]) -> Outcome:
        moved = self._end("succeed", AttemptOutcome.SUCCEEDED, images=images)
        return self._ended(moved, Outcome("succeeded"))

    def collected(self, images: list[dict[str, Any]]) -> Outcome:
        """fal's answer is in: on to the store stage (published now; swept if lost)."""
        from imagegen.worker.jobs.dispatch import COLLECT_PUBLISH_GRACE_S, send_store

        until = utcnow() + timedelta(seconds=COLLECT_PUBLISH_GRACE_S)
        moved = self._end("collected", AttemptOutcome.SUCCEEDED, images=images, lease_until=until)
        if moved is None:
            return self._ended(moved, SKIPPED)
        try:
            send_store(self.deps.app, self.job.id, self.job.attempts)
        except Exception as exc:  # Redis is away: the short lease above brings it back
            log.warning("store.not_published", job_id=str(self.job.id), error=str(exc))
        return Outcome("storing")

    def requeue(self, delay_s: float, reason: str, *, forget_request: bool = False) -> Outcome:
        """Back to queued; the next submit comes after ``delay_s`` (swept if it never does)."""
        grace = timedelta(seconds=delay_s + self.deps.settings.queued_grace_s)
        values: dict[str, Any] = {**self.cost, "lease_until": utcnow() + grace}
        if forget_request:
            values.update(fal_request_id=None, submitted_at=None, poll_at=None)
        moved = write(
            self.deps.settings.database_url,
            lambda db: state.move(db, self.job.id, "requeue", owner=self.owner, values=values),
        )
        if moved is not None:
            fire(moved, self.deps.app)
        return self._ended(moved, Outcome("retry", retry_in=delay_s, reason=reason))

    def release(self, delay_s: float, reason: str) -> Outcome:
        """Collect again after ``delay_s``: the job stays collecting, unheld (swept if lost)."""
        grace = timedelta(seconds=delay_s + self.deps.settings.queued_grace_s)
        values = {"lease_until": utcnow() + grace}
        moved = write(
            self.deps.settings.database_url,
            lambda db: state.move(db, self.job.id, "release", owner=self.owner, values=values),
        )
        return self._ended(moved, Outcome("retry", retry_in=delay_s, reason=reason))

    def failed_or_retry(
        self, error: FalError, *, tries: int, forget_request: bool = False
    ) -> Outcome:
        """Apply the retry policy to ``error`` (``tries``: what IMAGEGEN_MAX_ATTEMPTS caps)."""
        decision = self.deps.policy.decide(error, max(tries, 1))
        self._side_effects(error)
        if self.number is not None:
            number = self.number
            write(
                self.deps.settings.database_url,
                lambda db: attempts.close(
                    db, self.job.id, number, attempts.outcome_of(error), error
                ),
            )
            self.number = None
        if isinstance(decision, GiveUp):
            message = f"{error.message} ({decision.reason})" if error.retryable else error.message
            return self.fail(message)
        log.info(
            "job.retry",
            job_id=str(self.job.id),
            error=error.message,
            delay_s=round(decision.delay_s, 2),
        )
        reason = f"{error.message} ({decision.reason})"
        return self.requeue(decision.delay_s, reason, forget_request=forget_request)

    def _side_effects(self, error: FalError) -> None:
        if isinstance(error, AccountLocked):
            self.deps.guard.lock(error.message)
        elif error.http_status in (401, 403):
            log.critical("fal.auth_rejected", error=error.message, action="check FAL_KEY")
        if error.http_status == 429:  # every worker waits, not just this job
            retry_after = getattr(error, "retry_after_s", None)
            metrics.FAL_COOLDOWNS.inc()
            self.deps.limiter.cool_down(retry_after or self.deps.policy.backoff_s(1))

    def free_slot(self) -> None:
        if not self.holds_slot:
            return
        self.holds_slot = False
        try:
            self.deps.limiter.release(str(self.job.id))
        except REDIS_UNAVAILABLE as exc:  # the slot's lease runs out instead
            log.warning("fleet.slot_not_released", job_id=str(self.job.id), error=str(exc))
            return
        fairshare.grant(self.deps.settings, self.deps.app, self.deps.limiter)

    def park(self) -> Outcome:
        """The fleet is at its cap: wait for a slot, granted fairly (``worker.jobs.fairshare``)."""
        moved = write(
            self.deps.settings.database_url, lambda db: fairshare.park(db, self.job.id, self.owner)
        )
        if moved is None:
            return self._ended(moved, SKIPPED)
        fire(moved, self.deps.app)
        fairshare.waiting(self.deps.settings, self.deps.app, self.deps.limiter)
        return Outcome("waiting", reason="waiting for a fal slot (IMAGEGEN_FAL_CONCURRENCY)")

    def cancel_at_fal(self) -> None:
        if self.request_id is None:
            return
        try:
            self.deps.gateway.cancel(self.job.model, self.request_id)
        except FalError as error:  # finished at fal already, or unreachable: the row decides
            log.info("fal.cancel_failed", job_id=str(self.job.id), error=error.message)

    def webhook_already_came(self, request_id: str) -> None:
        """Webhook mode: fal's callback may have come while the POST's answer was on its way."""
        from imagegen.worker.fal import webhook_store
        from imagegen.worker.jobs.dispatch import heard_completed

        if write(self.deps.settings.database_url, lambda db: webhook_store.body(db, request_id)):
            heard_completed(self.deps.settings, self.deps.app, self.deps.limiter, self.job.id)
