"""One run of one job: claim, submit (or resume), wait, record.

Collaborators come in through ``Runtime`` so the story can be tested without Celery.
The Celery task (``worker.tasks``) only turns ``RetryLater`` into ``Task.retry``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models import AttemptOutcome, JobStatus
from worker import store
from worker.account import AccountGuard
from worker.db import session_scope
from worker.errors import (
    AccountLocked,
    FalError,
    PermanentFalError,
    PolicyRefusal,
    TransientFalError,
)
from worker.fal_gateway import FalGateway
from worker.logs import get_logger, prompt_hash
from worker.retry import GiveUp, RetryPolicy
from worker.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class Done:
    """The run ended; ``summary`` is what Flower shows (``refused:<category>``, ...)."""

    summary: str


@dataclass(frozen=True)
class RetryLater:
    """Run again after ``delay_s`` (the worker slot is freed meanwhile)."""

    delay_s: float
    reason: str


@dataclass
class Runtime:
    """Everything a run talks to."""

    settings: Settings
    gateway: FalGateway
    policy: RetryPolicy
    guard: AccountGuard
    sleep: Callable[[float], None] = field(default=time.sleep)
    monotonic: Callable[[], float] = field(default=time.monotonic)


class _AttemptHooks:
    """Writes the attempt row and bumps ``jobs.attempts`` as each submit POST is sent."""

    def __init__(self, database_url: str, job_id: uuid.UUID) -> None:
        self._url, self._job_id = database_url, job_id
        self.number: int | None = None

    def sending(self) -> None:
        with session_scope(self._url) as session:
            self.number = store.begin_attempt(session=session, job_id=self._job_id)

    def not_sent(self) -> None:
        if self.number is not None:
            with session_scope(self._url) as session:
                store.retract_attempt(session=session, job_id=self._job_id, number=self.number)
            self.number = None


def run_job(job_id: uuid.UUID, rt: Runtime, *, task_retries: int = 0) -> Done | RetryLater:
    """Take the job as far as it goes in this run."""
    with session_scope(rt.settings.database_url) as session:
        job = store.claim(session=session, job_id=job_id)
        number = store.latest_attempt(session=session, job_id=job_id) if job else None
    if job is None:
        log.info("job.skipped", job_id=str(job_id), reason="unknown or already finished")
        return Done("skipped")
    run = _Run(rt, job, number, task_retries)
    return run.execute()


class _Run:
    def __init__(
        self, rt: Runtime, job: store.JobSnapshot, number: int | None, task_retries: int
    ) -> None:
        self.rt, self.job, self.number, self.task_retries = rt, job, number, task_retries
        self.submissions = job.attempts
        self.phase = "submit"
        self.log = log.bind(job_id=str(job.id), prompt_hash=prompt_hash(job.prompt))

    def execute(self) -> Done | RetryLater:
        try:
            request_id = self.job.fal_request_id or self.submit()
            self.phase = "wait"
            images = self.wait(request_id)
        except PolicyRefusal as refusal:
            return self.refused(refusal)
        except FalError as error:
            return self.failed_or_retry(error)
        return self.succeeded(images)

    def submit(self) -> str:
        settings = self.rt.settings
        if self.submissions >= settings.max_attempts:
            raise PermanentFalError(
                f"not submitted again: {self.submissions} submissions already "
                f"(IMAGEGEN_MAX_ATTEMPTS={settings.max_attempts})"
            )
        self.rt.guard.check()
        hooks = _AttemptHooks(settings.database_url, self.job.id)
        arguments: dict[str, Any] = {"prompt": self.job.prompt, **self.job.params}
        try:
            request_id = self.rt.gateway.submit(self.job.model, arguments, hooks)
        finally:
            self.number = hooks.number
            self.submissions += 1 if hooks.number is not None else 0
        assert self.number is not None
        with session_scope(settings.database_url) as session:
            store.record_submitted(
                session=session, job_id=self.job.id, number=self.number, request_id=request_id
            )
        self.log.info("fal.submitted", attempt=self.number, fal_request_id=request_id)
        return request_id

    def wait(self, request_id: str) -> list[dict[str, Any]]:
        """Poll with a growing interval until COMPLETED, then fetch the images."""
        settings, gateway = self.rt.settings, self.rt.gateway
        deadline = self.rt.monotonic() + settings.generation_timeout_s
        interval, failures = settings.poll_initial_s, 0
        while True:
            self.rt.sleep(interval)
            try:
                status = gateway.status(self.job.model, request_id)
            except TransientFalError:
                failures += 1
                if failures >= settings.max_attempts:
                    raise
            else:
                failures = 0
                if status.done:
                    return self.fetch(request_id, status.failure())
            if self.rt.monotonic() > deadline:
                raise TransientFalError(
                    f"fal did not finish within {settings.generation_timeout_s:g}s "
                    "(IMAGEGEN_GENERATION_TIMEOUT_S)"
                )
            interval = min(interval * settings.poll_factor, settings.poll_max_s)

    def fetch(self, request_id: str, failure: FalError | None) -> list[dict[str, Any]]:
        """The images of a COMPLETED request, or the error it completed with.

        A COMPLETED status that reports a refusal still has its result read: fal's 422
        there names the category and carries the message the user sees.
        """
        if failure is not None and not isinstance(failure, PolicyRefusal):
            raise failure
        try:
            output = self.rt.gateway.result(self.job.model, request_id)
        except PolicyRefusal:
            raise
        except FalError as error:
            if failure is not None:
                raise failure from error
            if isinstance(error, TransientFalError):
                # fal's own error type means the request itself failed: submit anew
                error.resubmit = error.error_type is not None
            raise
        if failure is not None:
            raise failure
        return _images(output)

    def failed_or_retry(self, error: FalError) -> Done | RetryLater:
        # Submissions are what IMAGEGEN_MAX_ATTEMPTS caps; a request that is still alive at
        # fal but could not be polled counts Celery runs instead.
        resubmit = isinstance(error, TransientFalError) and error.resubmit
        counts_submissions = self.phase == "submit" or resubmit
        attempt = self.submissions if counts_submissions else self.task_retries + 1
        decision = self.rt.policy.decide(error, max(attempt, 1))
        with session_scope(self.rt.settings.database_url) as session:
            if self.number is not None:
                store.record_attempt_error(
                    session=session, job_id=self.job.id, number=self.number, error=error
                )
            if isinstance(decision, GiveUp):
                message = error.message
                if error.retryable:
                    message = f"{message} ({decision.reason})"
                store.finish(
                    session=session, job_id=self.job.id, status=JobStatus.FAILED, error=message
                )
            elif resubmit:
                store.forget_request(session=session, job_id=self.job.id)
        if isinstance(error, AccountLocked):
            self.rt.guard.lock(error.message)
        if isinstance(decision, GiveUp):
            self.log.warning("job.failed", error=error.message, reason=decision.reason)
            return Done("failed")
        self.log.info("job.retry", error=error.message, delay_s=round(decision.delay_s, 2))
        return RetryLater(decision.delay_s, decision.reason)

    def refused(self, refusal: PolicyRefusal) -> Done:
        with session_scope(self.rt.settings.database_url) as session:
            if self.number is not None:
                store.record_attempt_error(
                    session=session, job_id=self.job.id, number=self.number, error=refusal
                )
            store.finish(
                session=session,
                job_id=self.job.id,
                status=JobStatus.REFUSED,
                refusal_category=refusal.category,
                refusal_message=refusal.message,
            )
        self.log.info(
            "job.refused", category=refusal.category, soft=refusal.soft, attempt=self.number
        )
        return Done(f"refused:{refusal.category}")

    def succeeded(self, images: list[dict[str, Any]]) -> Done:
        with session_scope(self.rt.settings.database_url) as session:
            store.close_attempt(
                session=session,
                job_id=self.job.id,
                number=self.number,
                outcome=AttemptOutcome.SUCCEEDED,
            )
            store.finish(
                session=session, job_id=self.job.id, status=JobStatus.SUCCEEDED, images=images
            )
        self.log.info("job.succeeded", images=len(images), attempt=self.number)
        return Done("succeeded")


def _images(output: dict[str, Any]) -> list[dict[str, Any]]:
    images = output.get("images")
    if not isinstance(images, list) or not images:
        raise PermanentFalError("fal completed the request but returned no images")
    if not all(isinstance(i, dict) and isinstance(i.get("url"), str) for i in images):
        raise PermanentFalError("fal returned images without URLs")
    return images
