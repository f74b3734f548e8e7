"""One asyncio poller per host: watches every request at fal and starts its collect.

Each tick takes the due rows (``worker.fal.due``), asks fal for their status, many at
once, and acts on the answer: COMPLETED -> ``heard_completed`` (at_fal -> collecting, the
fleet slot released, the collect task published); still queued or running -> the next
check from the learned ``Schedule`` and the slot's lease renewed; past the job's deadline
-> cancelled at fal and failed. No thread waits on fal; the database and Redis calls are
short and run in threads. The process may die at any time: what it had claimed comes due
again after the claim window.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import fal_client
import httpx
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imagegen.models import utcnow
from imagegen.worker.db import write
from imagegen.worker.fal import due
from imagegen.worker.fal.gateway import resolve_key
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.fal.schedule import Schedule
from imagegen.worker.fal.status_client import StatusClients, close_fal
from imagegen.worker.jobs.dispatch import heard_completed
from imagegen.worker.jobs.hooks import fire
from imagegen.worker.logs import get_logger
from imagegen.worker.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from imagegen.worker.settings import Settings

T = TypeVar("T")
#: a service away (Redis, Postgres, the broker): one line a tick, no traceback
OUTAGES: tuple[type[Exception], ...] = (
    *REDIS_UNAVAILABLE,
    DBAPIError,
    PoolTimeout,
    KombuOperationalError,
)
log = get_logger("worker.poller")
#: tries of one of the poller's own database calls (its ticks try again)
DB_ATTEMPTS = 2
#: status answers in a row that fal-client could not parse before the job fails on them
MALFORMED_LIMIT = 3
#: jobs whose status calls failed, remembered for their backoff (then forgotten at once)
FAILURES_KEPT = 100_000
#: while jobs wait for a slot: a request at fal is checked at least this often ...
CROWDED_STEP_S = 0.5
#: ... unless the cap is so big that this many status calls a second would not do
CROWDED_STATUS_RATE = 100.0


class StatusAPI(Protocol):
    """What the poller needs of fal-client's AsyncClient."""

    async def status(self, application: str, request_id: str) -> fal_client.Status: ...

    async def cancel(self, application: str, request_id: str) -> None: ...


class Poller:
    """Checks the requests at fal that are due, until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        app: Celery,
        limiter: FalLimiter,
        fal: StatusAPI | None = None,
        schedule: Schedule | None = None,
        concurrency: int = 64,
        tick_s: float = 0.25,
        claim_s: float = 30.0,
        grace_s: float = 5.0,
    ) -> None:
        self.settings, self.app, self.limiter = settings, app, limiter
        self.fal = fal or StatusClients(
            resolve_key(settings), concurrency, keepalive_s=settings.fal_keepalive_s
        )
        self.schedule = schedule or Schedule(
            initial_s=settings.poll_initial_s,
            max_s=settings.poll_max_s,
            factor=settings.poll_factor,
        )
        self.concurrency, self.tick_s = concurrency, tick_s
        self.claim_s, self.grace_s = claim_s, grace_s
        self._slots = asyncio.Semaphore(concurrency)
        self._checks: set[asyncio.Task[None]] = set()
        self._plans: list[tuple[uuid.UUID, datetime]] = []
        self._failures: Counter[uuid.UUID] = Counter()
        #: what happened, for logs and tests: checks, collected, waiting, failed, deadline
        self.counts: Counter[str] = Counter()
        self.collected: list[uuid.UUID] = []
        self._crowded_step_s: float | None = None

    async def _db(self, work: Callable[[Any], T]) -> T:
        """One short transaction in a thread; retried by the next tick rather than here
        for long (a stop must not wait out a database outage)."""
        return await asyncio.to_thread(
            write, self.settings.database_url, work, attempts=DB_ATTEMPTS
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``; then let the checks under way finish (``grace_s``)."""
        from imagegen.worker.fal.housekeeping import Housekeeping

        housekeeping = Housekeeping(self)
        self._slots = asyncio.Semaphore(self.concurrency)  # this event loop's
        while not stop.is_set():
            more = False
            try:
                more = await self._tick()
                await housekeeping.maybe_run()
            except OUTAGES as exc:  # the database or Redis is away: the next tick retries
                log.warning("poller.tick_failed", error=type(exc).__name__, detail=str(exc))
            except Exception:
                log.exception("poller.tick_failed")
            if not more:
                await _wait(stop, self.tick_s)
        await self._drain()

    def _room(self) -> int:
        """Rows to claim now: at most two rounds of checks ahead, so that a claimed row
        waits for a slot far less than its claim window."""
        return max(2 * self.concurrency - len(self._checks), 0)

    async def _tick(self) -> bool:
        """Claim and start the due checks; True when more were due than it took."""
        await self._flush()
        self._crowded_step_s = await asyncio.to_thread(self._crowded)
        room = self._room()
        if room == 0:
            return False
        now = utcnow()
        rows = await self._db(lambda db: due.claim(db, now, room, self.claim_s))
        for row in rows:
            task = asyncio.create_task(self._bounded(row))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
        return len(rows) == room

    def _crowded(self) -> float | None:
        """While jobs wait for a fal slot, how often a request at fal is checked at most:
        every CROWDED_STEP_S, or slower for a big cap (at most CROWDED_STATUS_RATE calls a
        second in all), so that a finished request frees its slot soon after."""
        limit = self.limiter.limit
        if limit is None or not self.limiter.anyone_waiting():
            return None
        return max(CROWDED_STEP_S, limit / CROWDED_STATUS_RATE)

    async def _drain(self) -> None:
        if self._checks:
            _, late = await asyncio.wait(set(self._checks), timeout=self.grace_s)
            for task in late:  # their rows come due again after the claim window
                task.cancel()
        await self._flush()
        await self.aclose()

    async def aclose(self) -> None:
        await close_fal(self.fal)

    async def _bounded(self, row: due.Due) -> None:
        async with self._slots:
            try:
                await self._check(row)
            except Exception:
                log.exception("poller.check_failed", job_id=str(row.id))
                self._plan(row, utcnow() + timedelta(seconds=self.settings.poll_max_s))

    async def _check(self, row: due.Due) -> None:
        # past its deadline (or the generation timeout): asked once more, since a request
        # fal finished in time is delivered, then stopped
        stop = row.give_up(utcnow(), self.settings.generation_timeout_s)
        planned_s = (row.poll_at - row.since).total_seconds()
        later_s = self.schedule.plan(row.model, row.id, planned_s) if stop is None else None
        if later_s is not None:  # planned before the model was learned: not worth a call
            self._plan(row, row.since + timedelta(seconds=later_s))
            return
        self.counts["checks"] += 1
        sent_s = (utcnow() - row.since).total_seconds()
        answer, malformed = await self._status(row)
        if answer == "completed":
            self._failures.pop(row.id, None)
            self.schedule.completed(row.model, row.id, planned_s, sent_s)
            await self._completed(row)
        elif stop is not None:
            await self._stop(row, stop)
        elif answer == "waiting":
            self._failures.pop(row.id, None)
            self.counts["waiting"] += 1
            elapsed_s = (utcnow() - row.since).total_seconds()
            next_s = self.schedule.next_check_s(row.model, row.id, max(elapsed_s, planned_s))
            self._plan(row, row.since + timedelta(seconds=next_s))
        else:
            await self._no_answer(row, malformed)

    async def _no_answer(self, row: due.Due, malformed: str | None) -> None:
        """Check again soon, later each time; a body that keeps making no sense fails it."""
        self.counts["failed"] += 1
        if len(self._failures) > FAILURES_KEPT:  # rows another poller took on meanwhile
            self._failures.clear()
        self._failures[row.id] += 1
        failures = self._failures[row.id]
        if malformed is not None and failures >= MALFORMED_LIMIT:
            self._failures.pop(row.id, None)
            await self._fail(row, f"fal answered the status with a malformed body ({malformed})")
            return
        backoff_s = self.settings.poll_initial_s * 2 ** (failures - 1)
        self._plan(row, utcnow() + timedelta(seconds=min(backoff_s, self.settings.poll_max_s)))

    async def _status(self, row: due.Due) -> tuple[str, str | None]:
        """completed, waiting or failed (no answer: check again soon), and for an answer
        that makes no sense (not fal's protocol) what was wrong with it."""
        if row.fal_request_id is None:
            return "completed", None  # nothing to ask about: the collect stage sorts it out
        try:
            status = await asyncio.wait_for(
                self.fal.status(row.model, row.fal_request_id), self.settings.poll_timeout_s
            )
        except fal_client.FalClientHTTPError as exc:
            if exc.status_code == 404:  # fal does not know it: collect classifies that
                return "completed", None
            log.warning("poller.status_error", job_id=str(row.id), http_status=exc.status_code)
            return "failed", None
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("poller.status_error", job_id=str(row.id), error=type(exc).__name__)
            return "failed", None
        except (ValueError, KeyError, TypeError) as exc:  # fal-client could not parse it
            log.warning("poller.status_malformed", job_id=str(row.id), error=str(exc))
            return "failed", str(exc)
        return ("completed" if isinstance(status, fal_client.Completed) else "waiting"), None

    async def _completed(self, row: due.Due) -> None:
        args = (self.settings, self.app, self.limiter, row.id)
        won = await asyncio.to_thread(heard_completed, *args)
        if won:
            self.counts["collected"] += 1
            self.collected.append(row.id)

    async def _stop(self, row: due.Due, error: str) -> None:
        """Past its deadline (or the generation timeout): cancel at fal (best effort), fail."""
        if row.fal_request_id is not None:
            try:
                await asyncio.wait_for(self.fal.cancel(row.model, row.fal_request_id), 1.0)
            except (fal_client.FalClientHTTPError, httpx.HTTPError, TimeoutError) as exc:
                log.info("poller.cancel_failed", job_id=str(row.id), error=type(exc).__name__)
        if await self._fail(row, error):
            self.counts["deadline"] += 1

    async def _fail(self, row: due.Due, error: str) -> bool:
        """at_fal -> failed, its fleet slot given back; False if it had moved on already."""
        moved = await self._db(lambda db: due.fail_at_fal(db, row.id, error))
        if moved is not None:
            await asyncio.to_thread(self._after_terminal, moved)
        return moved is not None

    def _after_terminal(self, moved: Any) -> None:
        self.limiter.release(str(moved.job.id))
        fire(moved, self.app)  # the app: a callback to the job's web app, if it asked

    def _plan(self, row: due.Due, at: datetime) -> None:
        if row.deadline_at is not None:
            at = min(at, row.deadline_at)  # a deadline is noticed when it passes
        if self._crowded_step_s is not None:  # a slot heard of sooner goes to a waiting job
            at = min(at, utcnow() + timedelta(seconds=self._crowded_step_s))
        self._plans.append((row.id, at))

    async def _flush(self) -> None:
        """Write the next checks planned since the last flush; renew their fal slots."""
        plans, self._plans = self._plans, []
        if not plans:
            return
        try:
            await self._db(lambda db: due.reschedule(db, plans))
        except Exception:
            self._plans.extend(plans)  # written next tick; meanwhile the claim window holds
            raise
        furthest_s = max((at - utcnow()).total_seconds() for _, at in plans)
        lease_s = max(self.settings.lease_s, furthest_s + self.claim_s + 10.0)
        tokens = [str(job_id) for job_id, _ in plans]
        await asyncio.to_thread(self.limiter.renew_many, tokens, lease_s)


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
