"""Recorder threads: a saturated worker process hands the end of its runs to them.

``worker.pipeline.Recorder`` on threads of the worker process (built by ``worker.tasks``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from celery.worker import state as worker_state
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from worker.logs import get_logger
from worker.pipeline import Done, Gauge, RetryLater, settle
from worker.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from worker.settings import Settings

#: when a recorder thread found the database unreachable: run the job again this much later
RECORDER_DB_RETRY_S = 5.0
#: how often a deferred recording looks again whether task messages still wait
_DEFER_CHECK_S = 0.25

#: what the task does with a recorded outcome: (job id, outcome, task retries, context)
FollowUp = Callable[[uuid.UUID, Done | RetryLater, int, Any], None]


def threads_held_by_generations(generating: Gauge) -> Callable[[], bool]:
    """Do task messages this process reserved (Celery's prefetch) wait for a thread while
    at least a quarter of its runs wait on fal generations? Then a run that fal has
    finished gives its thread to the next message. (With generations as short as their
    bookkeeping, as at a local emulator with no latency, the threads are busy with that
    bookkeeping, not held by fal: handing it over would only add to it.)"""

    def busy() -> bool:  # (the run asking has just stopped waiting on fal: count it in)
        active = len(worker_state.active_requests)
        held = generating.value + 1
        return len(worker_state.reserved_requests) > active and 4 * held >= active

    return busy


class RecorderThreads:
    """A saturated process (prefetched task messages wait for a thread) would otherwise hear
    COMPLETED from a wave of requests and spend its threads reading results, checking images
    and writing rows while the next wave's messages wait: fal slots stay empty meanwhile.
    Here a run gives its thread back as soon as fal said COMPLETED and its fal slot is free,
    and these threads record the outcomes; while messages still wait for a thread, a
    recording waits too (at most ``defer_s``), so the CPU goes to the next wave's submits
    and the rows are written after them. ``follow_up`` then does what the task would have
    done with the outcome (tell Flower, schedule the retry, send the callback).

    Recording waits on fal's round trips (the result, the image check), tens to hundreds of
    milliseconds each over a network: enough threads to keep many in flight, and at most
    ``queue`` runs waiting for one; past that a run records itself, in its own thread.
    ``context`` is called on the handing-over task's thread; ``follow_up`` gets its answer.
    """

    def __init__(
        self,
        threads: int,
        *,
        follow_up: FollowUp,
        queue: int | None = None,
        defer_s: float = 0.0,
        busy: Callable[[], bool],
        context: Callable[[], Any] = lambda: None,
    ) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imagegen-recorder")
        #: runs handed over and not recorded yet, at most ``queue``
        self._places = threading.BoundedSemaphore(max(queue or threads, threads))
        self._defer_s, self._busy = defer_s, busy
        self._follow_up, self._context = follow_up, context
        self._closing = False

    @classmethod
    def for_settings(
        cls, settings: Settings, generating: Gauge, follow_up: FollowUp, context: Callable[[], Any]
    ) -> RecorderThreads:
        return cls(
            settings.recorder_threads,
            follow_up=follow_up,
            queue=settings.recorder_queue,
            defer_s=settings.record_defer_s,
            busy=threads_held_by_generations(generating),
            context=context,
        )

    def wanted(self) -> bool:
        return self._busy() and self._places.acquire(blocking=False)

    def take(
        self,
        job_id: uuid.UUID,
        finish: Callable[[], Done | RetryLater],
        *,
        callback_url: str | None,
        task_retries: int,
    ) -> None:
        context = self._context()  # on the task's thread
        record = partial(self._record, job_id, finish, callback_url, task_retries, context)
        try:
            self._pool.submit(self._in_turn, record, time.monotonic() + self._defer_s)
        except RuntimeError:  # shut down already: give the place back
            self._places.release()
            raise

    def _in_turn(self, record: Callable[[], None], latest: float) -> None:
        try:
            while not self._closing and self._busy():
                left = latest - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, _DEFER_CHECK_S))
            record()
        finally:
            self._places.release()

    def shutdown(self) -> None:
        """Record every outcome already handed over, now (a warm shutdown waits for them)."""
        self._closing = True
        self._pool.shutdown(wait=True)

    def _record(
        self,
        job_id: uuid.UUID,
        finish: Callable[[], Done | RetryLater],
        callback_url: str | None,
        task_retries: int,
        context: Any,
    ) -> None:
        """Finish a handed-over run and do what the task would have done with its outcome."""
        log = get_logger(__name__).bind(job_id=str(job_id))
        try:
            try:
                outcome = finish()
            except (DBAPIError, PoolTimeout) as exc:  # as the task's autoretry would
                log.warning("recorder.database_unreachable", error=type(exc).__name__)
                outcome = RetryLater(RECORDER_DB_RETRY_S, "the database is unreachable")
            self._follow_up(job_id, settle(outcome, callback_url), task_retries, context)
        except REDIS_UNAVAILABLE as exc:  # logged per retry already; the lease runs out
            log.warning("recorder.redis_unavailable", error=str(exc))
        except Exception:  # the lease runs out and the sweeper republishes the job
            log.exception("recorder.failed")
