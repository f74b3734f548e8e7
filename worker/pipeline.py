"""One run of one job: claim, submit (or resume), wait, record.

Collaborators come in through ``Runtime`` so the story can be tested without Celery.
The Celery task (``worker.tasks``) only turns ``RetryLater`` into ``Task.retry``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from models import AttemptOutcome, JobStatus, utcnow
from worker import fal_webhook, metrics, store
from worker.account import AccountGuard
from worker.db import write
from worker.errors import (
    AccountLocked,
    DeadlineExceeded,
    FalError,
    PermanentFalError,
    PolicyRefusal,
    RequestCancelled,
    TransientFalError,
)
from worker.fal_gateway import FalGateway, FalStatus, GatewayPool
from worker.fleet import FalLimiter
from worker.logs import get_logger, prompt_hash
from worker.moderation import Chain, ModerationUnavailable
from worker.polling import LatencyEstimate
from worker.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from worker.retry import GiveUp, RetryPolicy
from worker.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class Done:
    """The run ended; ``summary`` is its task's result (``refused:<category>``, ...).

    ``notify``: the job ended here and its web app asked for a callback. ``reason``: why a
    ``failed`` job failed. ``cancelled``: the job was cancelled (here, or by someone else
    before or while this run worked on it): Flower shows the task REVOKED.
    """

    summary: str
    notify: bool = False
    reason: str | None = None
    cancelled: bool = False

    @property
    def terminal(self) -> bool:
        return self.summary.split(":", 1)[0] in ("succeeded", "refused", "failed", "cancelled")


@dataclass(frozen=True)
class RetryLater:
    """Run again after ``delay_s`` (the worker slot is freed meanwhile)."""

    delay_s: float
    reason: str


class Recorder(Protocol):
    """Threads that finish runs whose request fal has completed (``worker.recorder``)."""

    def wanted(self) -> bool:
        """Should a run give its thread back now (task messages wait for one, and a recorder
        thread is free)? True holds that recorder thread for the run: hand it over with
        ``take``."""

    def take(
        self,
        job_id: uuid.UUID,
        finish: Callable[[], Done | RetryLater],
        *,
        callback_url: str | None,
        task_retries: int,
    ) -> None:
        """Run ``finish`` (result, image check, row) on a recorder thread, then settle it."""


class Gauge:
    """A count the threads of a process share (``with gauge:`` counts this thread in)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def __enter__(self) -> None:
        with self._lock:
            self.value += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self.value -= 1


@dataclass
class Runtime:
    """Everything a run talks to."""

    settings: Settings
    gateway: FalGateway | GatewayPool
    policy: RetryPolicy
    guard: AccountGuard
    limiter: FalLimiter
    latency: LatencyEstimate = field(default_factory=LatencyEstimate)
    #: the moderation pre-filter (IMAGEGEN_MODERATION); None: off
    moderation: Chain | None = None
    #: one waiter per process asks Redis for a fal slot at a time (see _Run.wait_for_turn)
    turnstile: threading.Lock = field(default_factory=threading.Lock)
    sleep: Callable[[float], None] = field(default=time.sleep)
    monotonic: Callable[[], float] = field(default=time.monotonic)
    #: takes over a run once fal said COMPLETED, when the run's thread is wanted elsewhere
    recorder: Recorder | None = None
    #: runs of this process waiting for fal to finish a generation (polling it)
    generating: Gauge = field(default_factory=Gauge)


class _Completed(Exception):
    """fal said COMPLETED: the rest of the run may go to a recorder thread."""

    def __init__(self, request_id: str, failure: FalError | None) -> None:
        super().__init__(request_id)
        self.request_id, self.failure = request_id, failure


class _Parked(Exception):
    """The run parked its request for fal's webhook (its slot stays taken)."""


class _LeaseLost(Exception):
    """The job was cancelled, finished or taken over while this run waited."""


class _AttemptHooks:
    """Writes the attempt row and bumps ``jobs.attempts`` as each submit POST is sent."""

    def __init__(self, database_url: str, job_id: uuid.UUID, counted: int | None) -> None:
        self._url, self._job_id = database_url, job_id
        self.number: int | None = None
        #: the attempt the claim already counted and opened (``store.claim_first_submit``)
        self.counted = counted

    def sending(self) -> None:
        metrics.SUBMISSIONS.inc()
        if self.counted is not None:
            self.number, self.counted = self.counted, None
            return
        self.number = write(
            self._url,
            lambda s: store.begin_attempt(db=s, job_id=self._job_id),
            one_statement=True,
        )

    def not_sent(self) -> None:
        if self.number is not None:
            number = self.number
            write(
                self._url,
                lambda s: store.retract_attempt(db=s, job_id=self._job_id, number=number),
            )
            self.number = None

    def never_sent(self) -> None:
        """The call ended before its POST was sent: un-count an attempt counted in advance."""
        if self.counted is not None:
            self.number, self.counted = self.counted, None
            self.not_sent()


def run_job(job_id: uuid.UUID, rt: Runtime, *, task_retries: int = 0) -> Done | RetryLater:
    """Take the job as far as it goes in this run."""
    metrics.IN_FLIGHT.inc()
    try:
        outcome, callback_url = _run_job(job_id, rt, task_retries)
    finally:
        metrics.IN_FLIGHT.dec()
    return settle(outcome, callback_url)


def settle(outcome: Done | RetryLater, callback_url: str | None) -> Done | RetryLater:
    """Count the run's outcome; a job that ended here notifies its web app, if it asked."""
    if isinstance(outcome, RetryLater):
        metrics.RETRIES.inc()
    elif outcome.terminal:
        metrics.JOBS_FINISHED.labels(outcome.summary.split(":", 1)[0]).inc()
        if callback_url is not None:
            return replace(outcome, notify=True)
    return outcome


def _run_job(
    job_id: uuid.UUID, rt: Runtime, task_retries: int
) -> tuple[Done | RetryLater, str | None]:
    owner = uuid.uuid4().hex
    url, slot, lease_s = rt.settings.database_url, str(job_id), rt.settings.lease_s
    admission = None
    if rt.moderation is None:  # nothing to check before a first submit: slot, then claim
        admission = rt.limiter.admit(slot, rt.guard)
        if admission.admitted:
            fresh = write(
                url,
                lambda db: store.claim_first_submit(
                    db=db, job_id=job_id, owner=owner, lease_s=lease_s
                ),
                one_statement=True,
            )
            if fresh is not None:  # claimed, attempt 1 counted: straight to the submit
                run = _Run(rt, fresh, task_retries, owner)
                run.took_slot()
                run.counted = 1
                return run.execute(), fresh.callback_url
    admitted = admission is not None and admission.admitted

    def take(db: Connection) -> tuple[store.JobSnapshot | None, Any]:
        job = store.claim(db=db, job_id=job_id, owner=owner, lease_s=rt.settings.lease_s)
        if job is None or job.attempts == 0:  # a first run has no attempt to look back at
            return job, None
        return job, store.latest_attempt(db=db, job_id=job_id)

    job, latest = write(url, take)
    if job is None:
        if admitted and admission is not None and not admission.held_before:
            rt.limiter.release(slot)
        log.info("job.skipped", job_id=str(job_id), reason="unknown, finished or leased")
        return Done("skipped", cancelled=_cancelled(url, job_id)), None
    run = _Run(rt, job, task_retries, owner)
    run.holds_slot = admitted
    if latest is not None and job.fal_request_id is not None:
        run.number = latest[0]  # resuming: errors belong to the request in flight
    elif latest is not None and latest[1] is AttemptOutcome.SENDING:
        return run.orphaned_submit(latest[0]), job.callback_url
    return run.execute(), job.callback_url


class _Run:
    def __init__(
        self,
        rt: Runtime,
        job: store.JobSnapshot,
        task_retries: int,
        owner: str,
    ) -> None:
        self.rt, self.job, self.task_retries = rt, job, task_retries
        self.number: int | None = None
        self.owner = owner
        self.submissions = job.attempts
        self.phase = "submit"
        self.request_id = job.fal_request_id
        self.log = log.bind(job_id=str(job.id), prompt_hash=prompt_hash(job.prompt))
        self.lease_renew_at = rt.monotonic() + rt.settings.lease_s / 2
        self.slot = str(job.id)  # one run per job at a time: the job holds at most one slot
        self.submitted_now = False
        self.parked = False
        self.holds_slot = False
        self.slot_freed = False
        #: attempt number the claim already counted for this run's first submit
        self.counted: int | None = None
        self.callback_read: tuple[dict[str, Any] | None] | None = None

    def execute(self, step: Callable[[], list[dict[str, Any]]] | None = None) -> Done | RetryLater:
        try:
            return self._conclude(step or self._to_images)
        except (DBAPIError, PoolTimeout):
            raise  # the database is unreachable: the task retries, the row says where to resume
        except REDIS_UNAVAILABLE:
            raise  # past its retries (worker.redis_client): the lease runs out, the sweeper resumes
        except Exception as exc:  # a bug must not leave the job running (and swept) forever
            self.log.exception("job.internal_error")
            self.cancel_at_fal()
            error = f"internal error in the worker ({type(exc).__name__}); see the worker log"
            return self.finish(JobStatus.FAILED, AttemptOutcome.PERMANENT, "failed", error=error)
        finally:
            if not self.parked:  # a parked request still runs at fal: it keeps its slot
                self.free_slot()

    def took_slot(self) -> None:
        self.holds_slot, self.slot_freed = True, False

    def free_slot(self) -> None:
        """Give back the fal slot (once): when fal said COMPLETED, or as the run ends."""
        if not self.slot_freed:
            try:
                self.rt.limiter.release(self.slot)
            except REDIS_UNAVAILABLE as exc:  # the slot's lease runs out instead
                self.log.warning("fleet.slot_not_released", error=str(exc))
            self.slot_freed, self.holds_slot = True, False

    def _to_images(self) -> list[dict[str, Any]]:
        if self.counted is None:  # (a counted first submit had both checked in SQL)
            self.check_deadline()
        if self.request_id is None and self.submissions == 0:
            self.prefilter()
        if self.request_id is None:
            if not self.holds_slot:
                self.wait_for_turn()
            self.request_id = self.submit()
            self.submitted_now = True
        elif not self.callback_stored():  # resuming a request in flight at fal: a slot
            self.rt.limiter.try_acquire(self.slot, force=True)
            self.took_slot()
        self.phase = "wait"
        if self.submitted_now and self.park(self.request_id):
            raise _Parked
        return self.wait(self.request_id)

    def _conclude(self, step: Callable[[], list[dict[str, Any]]]) -> Done | RetryLater:
        try:
            images = step()
        except _Parked:
            return Done("awaiting-webhook")
        except _Completed as completed:
            return self.hand_off(completed)
        except _LeaseLost:
            self.log.info("job.left", reason="cancelled, finished or taken over meanwhile")
            return Done("left", cancelled=_cancelled(self.rt.settings.database_url, self.job.id))
        except PolicyRefusal as refusal:
            return self.refused(refusal)
        except RequestCancelled:
            return self.finish(JobStatus.CANCELLED, AttemptOutcome.CANCELLED, "cancelled")
        except FalError as error:
            return self.failed_or_retry(error)
        return self.finish(
            JobStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED, "succeeded", images=images
        )

    def hand_off(self, completed: _Completed) -> Done:
        """Leave the rest of the run to a recorder thread; this one takes the next message.

        The job keeps its lease (renewed before the result is read); a crash in between
        leaves it running with its request id, and the sweeper republishes it when the lease
        expires: the next run resumes by request id, never submitting again.
        """
        recorder = self.rt.recorder
        assert recorder is not None
        request_id, failure = completed.request_id, completed.failure

        def images() -> list[dict[str, Any]]:
            self.keep_lease()
            return self.fetch(request_id, failure)

        self.log.info("job.handed_to_recorder", fal_request_id=request_id)
        recorder.take(  # from here on the run belongs to the recorder thread
            self.job.id,
            lambda: self.execute(images),
            callback_url=self.job.callback_url,
            task_retries=self.task_retries,
        )
        return Done("recording")

    def orphaned_submit(self, number: int) -> Done | RetryLater:
        """A run died between counting a submit and hearing fal's answer.

        fal offers no idempotency key, so sending again could pay twice. By default the
        job fails saying so; IMAGEGEN_RESUBMIT_UNKNOWN=true sends it again (counted).
        """
        self.write(
            lambda s: store.mark_unknown(db=s, job_id=self.job.id, number=number),
            one_statement=True,
        )
        self.log.warning("job.submit_outcome_unknown", attempt=number)
        if self.rt.settings.resubmit_unknown:
            return self.execute()
        message = (
            "a worker died while submitting this job to fal; the request may have reached "
            "fal, so it was not sent again to avoid paying twice (enqueue it again, or set "
            "IMAGEGEN_RESUBMIT_UNKNOWN=true)"
        )
        return self.finish(JobStatus.FAILED, AttemptOutcome.UNKNOWN, "failed", error=message)

    def prefilter(self) -> None:
        """Our moderation step, before the first (billable) submit; raises its refusal.

        With IMAGEGEN_MODERATION_FAIL_CLOSED, an unavailable moderation service makes the
        job wait and try again (counted as runs, like polling failures), then fail.
        """
        chain = self.rt.moderation
        if chain is None:
            return
        self.phase = "moderate"  # a retry here counts runs: nothing was submitted
        try:
            verdict = chain.check(self.job.prompt)
        except ModerationUnavailable as exc:
            message = f"the moderation service is unavailable ({exc.reason})"
            raise TransientFalError(message) from None
        self.phase = "submit"
        if verdict.refused:
            raise PolicyRefusal(
                verdict.category or "unspecified",
                verdict.message or "This prompt was refused before generation.",
                soft=verdict.soft,
                source="prefilter",
                checker=verdict.source,
            )

    def write(self, work: Callable[[Connection], Any], *, one_statement: bool = False) -> Any:
        return write(self.rt.settings.database_url, work, one_statement=one_statement)

    def check_deadline(self) -> None:
        deadline = self.job.deadline_at
        if deadline is not None and utcnow() >= deadline:
            if self.request_id is not None:
                self.cancel_at_fal()
            raise DeadlineExceeded("the job's deadline passed (IMAGEGEN_JOB_DEADLINE_S)")

    def wait_for_turn(self) -> None:
        """Block until no fleet-wide cool-down runs and a fal slot is ours (lease kept).

        The waiters of a process queue at its turnstile and only the first asks Redis,
        every 0.05-0.15 s: a thousand threads waiting for slots would otherwise spin on
        Redis (thousands of calls a second, most of a core). Queued waiters keep their
        job leases meanwhile. Raises AccountLocked while fal has locked the account.
        """
        turnstile = self.rt.turnstile
        while not turnstile.acquire(timeout=1.0):
            self.keep_lease()
        try:
            while True:
                admission = self.rt.limiter.admit(self.slot, self.rt.guard)
                if admission.locked is not None:
                    raise AccountLocked(f"not submitted: {admission.locked}")
                if admission.admitted:
                    self.took_slot()
                    return
                cooling = admission.cool_s
                self.rt.sleep(min(cooling, 1.0) if cooling > 0 else 0.05 + 0.1 * random.random())
                self.keep_lease()
        finally:
            turnstile.release()

    def submit(self) -> str:
        settings = self.rt.settings
        if self.submissions >= settings.max_attempts:
            raise PermanentFalError(
                f"not submitted again: {self.submissions} submissions already "
                f"(IMAGEGEN_MAX_ATTEMPTS={settings.max_attempts})"
            )
        hooks = _AttemptHooks(settings.database_url, self.job.id, self.counted)
        self.counted = None
        arguments: dict[str, Any] = {"prompt": self.job.prompt, **self.job.params}
        webhook = settings.webhook_url
        if webhook is not None:  # the job id is only a wake-up hint; fal signs the rest
            webhook += f"{'&' if '?' in webhook else '?'}job_id={self.job.id}"
        try:
            request_id = self.rt.gateway.submit(self.job.model, arguments, hooks, webhook)
        finally:
            hooks.never_sent()
            self.number = hooks.number
            self.submissions += 1 if hooks.number is not None else 0
        number = self.number
        assert number is not None
        self.log.info("fal.submitted", attempt=number, fal_request_id=request_id)
        self.write(
            lambda s: store.record_submitted(
                db=s, job_id=self.job.id, number=number, request_id=request_id
            ),
            one_statement=True,
        )
        return request_id

    def park(self, request_id: str) -> bool:
        """Webhook mode: free this worker slot until fal calls back (or polling takes over)."""
        settings = self.rt.settings
        if settings.webhook_url is None:
            return False
        parked = self.write(
            lambda s: store.park_for_webhook(
                db=s,
                job_id=self.job.id,
                owner=self.owner,
                request_id=request_id,
                wait_s=settings.webhook_fallback_s,
            ),
            one_statement=True,
        )
        if parked:
            self.parked = True
            self.rt.limiter.renew(self.slot, lease_s=settings.webhook_fallback_s + settings.lease_s)
            self.log.info("job.awaiting_webhook", fal_request_id=request_id)
        return bool(parked)

    def callback_stored(self) -> bool:
        if self.rt.settings.webhook_url is None or self.request_id is None:
            return False
        return self.stored_callback(self.request_id) is not None

    def stored_callback(self, request_id: str) -> dict[str, Any] | None:
        """fal's verified callback for the request, read from the table once per run."""
        if self.callback_read is None:
            body = self.write(
                lambda s: store.webhook_body(db=s, request_id=request_id), one_statement=True
            )
            self.callback_read = (body,)
        return self.callback_read[0]

    def from_webhook(self, request_id: str) -> list[dict[str, Any]] | None:
        """The images from fal's verified callback; None when none came (or it is unusable)."""
        body = self.stored_callback(request_id)
        if body is None:
            return None
        result = fal_webhook.outcome(body)
        self.log.info("fal.webhook_used", fal_request_id=request_id)
        if isinstance(result, TransientFalError):
            result.resubmit = True  # the callback is final: this request failed at fal
        if isinstance(result, FalError):
            raise result
        if result is None:  # fal could not serialise the output: read it once
            return self.fetch(request_id, None)
        return self.checked(_images(result))

    def wait(self, request_id: str) -> list[dict[str, Any]]:
        """Poll until COMPLETED, then fetch the images (``worker.polling`` says when).

        In webhook mode fal's callback, when it came, answers without any polling.
        """
        if self.rt.settings.webhook_url is not None:
            images = self.from_webhook(request_id)
            if images is not None:
                return images
        with self.rt.generating:
            status = self._poll_until_done(request_id)
        return self.completed(request_id, status.failure())

    def _poll_until_done(self, request_id: str) -> FalStatus:
        settings, gateway = self.rt.settings, self.rt.gateway
        latency, model = self.rt.latency, self.job.model
        started = self.rt.monotonic()
        deadline = started + settings.generation_timeout_s
        fresh = self.submitted_now
        interval, failures = settings.poll_initial_s, 0
        running_at: float | None = None  # when fal last said it was not done yet
        scout, first, wait = False, fresh, interval
        try:
            while True:
                if first:  # a fresh request's first poll is timed from what is known
                    first = False
                    scout = self.first_poll_turn(started)
                    wait = max(0.0, started + latency.first_wait_s(model, interval) - self.now())
                self.rt.sleep(wait)
                self.keep_lease()
                try:
                    status = gateway.status(model, request_id)
                except TransientFalError:
                    failures += 1
                    if failures >= settings.max_attempts:
                        raise
                else:
                    failures = 0
                    if status.done:
                        if fresh:
                            self.learn(started, running_at)
                        return status
                    running_at = self.now() - started
                if self.now() > deadline:
                    raise TransientFalError(
                        f"fal did not finish within {settings.generation_timeout_s:g}s "
                        "(IMAGEGEN_GENERATION_TIMEOUT_S)"
                    )
                step = self.next_step(started, fresh, scout)
                if step is not None:
                    wait = step
                    continue
                wait = interval
                interval = min(interval * settings.poll_factor, settings.poll_max_s)
        finally:
            if scout:
                latency.discharge_scout(model)

    def learn(self, started: float, running_at: float | None) -> None:
        """A fresh request is done: how long it took teaches when to poll the next ones.

        From the last "not done" answer, a lower bound: a busy host that hears COMPLETED
        late must not push later polls later.
        """
        took = self.now() - started
        learned = took if running_at is None else running_at
        self.rt.latency.observe(
            self.job.model, learned, done_at_first_poll=running_at is None, heard_s=took
        )
        metrics.FAL_LATENCY.observe(took)

    def completed(self, request_id: str, failure: FalError | None) -> list[dict[str, Any]]:
        """fal said COMPLETED: free the fal slot (the next submit need not wait for this
        result, image check and row), then fetch, here or on a recorder thread."""
        self.free_slot()
        recorder = self.rt.recorder
        if recorder is not None and recorder.wanted():
            raise _Completed(request_id, failure)
        return self.fetch(request_id, failure)

    def next_step(self, started: float, fresh: bool, scout: bool) -> float | None:
        """The next poll's delay when it is not the growing schedule's: near the learned
        end of a fresh request, or every IMAGEGEN_POLL_INITIAL_S for a scout (the other
        first requests wait for what it learns)."""
        if not fresh:
            return None
        latency, model = self.rt.latency, self.job.model
        step = latency.near_end_step_s(model, self.now() - started)
        if step is None and scout and not latency.known(model):
            return self.rt.settings.poll_initial_s
        return step

    def first_poll_turn(self, started: float) -> bool:
        """Before a fresh request's first poll: is it a scout (True), or was it told when
        generations of its model end (False)? Waits for that news (lease kept), at most
        ``news_wait_s`` (or half IMAGEGEN_GENERATION_TIMEOUT_S) after the submit; then it
        polls anyway."""
        latency, model = self.rt.latency, self.job.model
        settings = self.rt.settings
        give_up_at = started + min(latency.news_wait_s, settings.generation_timeout_s / 2)
        while not latency.known(model):
            if latency.enlist_scout(model):
                return True
            left = give_up_at - self.now()
            if left <= 0:
                return False
            latency.await_news(model, min(left, settings.lease_s / 4))
            self.keep_lease()
        return False

    def now(self) -> float:
        return self.rt.monotonic()

    def keep_lease(self) -> None:
        """Renew the lease when half of it is used; notice cancellation and deadlines."""
        self.check_deadline()  # each call, not each renewal: a deadline is kept to the poll
        if self.rt.monotonic() < self.lease_renew_at:
            return
        lease_s = self.rt.settings.lease_s
        job_id, owner = self.job.id, self.owner
        held = self.write(
            lambda s: store.renew_lease(db=s, job_id=job_id, owner=owner, lease_s=lease_s),
            one_statement=True,
        )
        if not held:
            raise _LeaseLost
        if self.holds_slot:
            try:
                self.rt.limiter.renew(self.slot)
            except REDIS_UNAVAILABLE as exc:  # the request runs at fal anyway: go on polling
                self.log.warning("fleet.slot_not_renewed", error=str(exc))
        self.lease_renew_at = self.rt.monotonic() + lease_s / 2

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
        return self.checked(_images(output))

    def checked(self, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.rt.settings.verify_images:
            self.rt.gateway.check_images(images)
        return images

    def cancel_at_fal(self) -> None:
        if self.request_id is None:
            return
        try:
            self.rt.gateway.cancel(self.job.model, self.request_id)
        except FalError as error:
            self.log.info("fal.cancel_failed", error=error.message)

    def failed_or_retry(self, error: FalError) -> Done | RetryLater:
        # Submissions are what IMAGEGEN_MAX_ATTEMPTS caps; a request that is still alive at
        # fal but could not be polled counts Celery runs instead.
        resubmit = isinstance(error, TransientFalError) and error.resubmit
        counts_submissions = self.phase == "submit" or resubmit
        attempt = self.submissions if counts_submissions else self.task_retries + 1
        decision = self.rt.policy.decide(error, max(attempt, 1))
        if isinstance(decision, GiveUp) and self.phase == "wait" and not resubmit:
            self.cancel_at_fal()  # do not leave a request running that nobody will read
        self.write(lambda s: self._record_failure(s, error, decision, resubmit))
        if isinstance(error, AccountLocked):
            self.rt.guard.lock(error.message)
        elif error.http_status in (401, 403):
            self.log.critical("fal.auth_rejected", error=error.message, action="check FAL_KEY")
        if error.http_status == 429:  # every worker waits, not just this job
            retry_after = getattr(error, "retry_after_s", None)
            self.rt.limiter.cool_down(retry_after or self.rt.policy.backoff_s(1))
        if isinstance(decision, GiveUp):
            self.log.warning("job.failed", error=error.message, reason=decision.reason)
            return Done("failed", reason=_failure_message(error, decision))
        self.log.info("job.retry", error=error.message, delay_s=round(decision.delay_s, 2))
        return RetryLater(decision.delay_s, f"{error.message} ({decision.reason})")

    def _record_failure(
        self, db: Connection, error: FalError, decision: Any, resubmit: bool
    ) -> None:
        if self.number is not None:
            store.record_attempt_error(db=db, job_id=self.job.id, number=self.number, error=error)
        if isinstance(decision, GiveUp):
            message = _failure_message(error, decision)
            store.finish(db=db, job_id=self.job.id, status=JobStatus.FAILED, error=message)
            return
        if resubmit:
            store.forget_request(db=db, job_id=self.job.id)
        store.release_for_retry(
            db=db,
            job_id=self.job.id,
            owner=self.owner,
            retry_at=utcnow() + timedelta(seconds=decision.delay_s),
            grace_s=self.rt.settings.queued_grace_s,
        )

    def refused(self, refusal: PolicyRefusal) -> Done:
        def record(db: Connection) -> None:
            if self.number is not None:
                store.record_attempt_error(
                    db=db, job_id=self.job.id, number=self.number, error=refusal
                )
            store.finish(
                db=db,
                job_id=self.job.id,
                status=JobStatus.REFUSED,
                refusal_category=refusal.category,
                refusal_message=refusal.message,
                refusal_source=refusal.source,
            )

        self.write(record)
        metrics.REFUSALS.labels(refusal.category, refusal.source).inc()
        self.log.info(
            "job.refused",
            category=refusal.category,
            soft=refusal.soft,
            attempt=self.number,
            source=refusal.source,
            checker=refusal.checker,
        )
        return Done(f"refused:{refusal.category}")

    def finish(
        self, status: JobStatus, outcome: AttemptOutcome, summary: str, **values: Any
    ) -> Done:
        attempt = (self.number, outcome)
        self.write(
            lambda db: store.finish(
                db=db, job_id=self.job.id, status=status, attempt=attempt, **values
            ),
            one_statement=True,
        )
        self.log.info(f"job.{summary}", attempt=self.number)
        return Done(summary, reason=values.get("error"), cancelled=status is JobStatus.CANCELLED)


def _failure_message(error: FalError, decision: GiveUp) -> str:
    """The job's error when it gives up on ``error``: what fal said, and why not again."""
    return f"{error.message} ({decision.reason})" if error.retryable else error.message


def _cancelled(database_url: str, job_id: uuid.UUID) -> bool:
    """Was the job cancelled? Asked by a run that could not (or no longer) hold its lease."""
    status = write(
        database_url,
        lambda db: db.execute(
            select(store.JOBS.c.status).where(store.JOBS.c.id == job_id)
        ).scalar_one_or_none(),
        one_statement=True,
    )
    return bool(status == JobStatus.CANCELLED)


def _images(output: dict[str, Any]) -> list[dict[str, Any]]:
    images = output.get("images")
    if not isinstance(images, list) or not images:
        raise PermanentFalError("fal completed the request but returned no images")
    if not all(isinstance(i, dict) and isinstance(i.get("url"), str) for i in images):
        raise PermanentFalError("fal returned images without URLs")
    return images
