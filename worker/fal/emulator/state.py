"""Request records and the queue lifecycle (IN_QUEUE -> IN_PROGRESS -> COMPLETED).

State advances lazily on every access, under one lock, replaying completions in
monotonic-clock order, so a limit of C with latency L runs exactly C at once.
With `reject_over_limit`, a submit beyond the limit is refused instead of queued.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, Literal

from .scenario import Step

State = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "CANCELLED"]
CancelOutcome = Literal["queued", "running", "completed", "unknown"]


@dataclass(eq=False)
class Request:
    rid: str
    app: str
    prompt: str
    step: Step
    width: int
    height: int
    num_images: int
    created_wall: float
    state: State = "IN_QUEUE"
    queue_position: int = 0
    started_at: float | None = None
    ends_at: float | None = None
    finished_at: float | None = None
    #: when a status poll first found it COMPLETED (how late the client heard it)
    heard_at: float | None = None
    status_polls: int = 0
    result_gets: int = 0
    cancels: int = 0
    webhook_url: str | None = None
    webhook_due: bool = False
    webhooks_sent: int = 0
    quality: str = "high"
    #: input images (and mask) of an edit; 0 for text-to-image
    inputs: int = 0
    #: the 422 `detail` an edit's runner met loading an input (the result GET answers it)
    load_error: list[dict[str, Any]] | None = None

    @property
    def inference_time(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return round(self.finished_at - self.started_at, 3)

    @property
    def heard_after_s(self) -> float | None:
        """Seconds from completing to the first status poll that said so (None: not yet)."""
        if self.heard_at is None or self.finished_at is None:
            return None
        return round(self.heard_at - self.finished_at, 3)

    def stats(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "state": self.state,
            "status_polls": self.status_polls,
            "heard_after_s": self.heard_after_s,
            "result_gets": self.result_gets,
            "cancels": self.cancels,
            "webhooks_sent": self.webhooks_sent,
        }


class QueueState:
    """All emulator bookkeeping; every public method takes the lock."""

    def __init__(
        self, latency_s: float, concurrency_limit: int | None, reject_over_limit: bool = False
    ) -> None:
        self._lock = threading.Lock()
        self.latency_s = latency_s
        self.concurrency_limit = concurrency_limit
        self.reject_over_limit = reject_over_limit
        self._clear()

    def _clear(self) -> None:
        self._requests: dict[str, Request] = {}
        self._queue: deque[Request] = deque()
        self._running: dict[str, Request] = {}
        #: (ends_at, tie-break, request) of every request started; a cancelled one is skipped
        self._ends: list[tuple[float, int, Request]] = []
        self._order = itertools.count()
        self._due: list[Request] = []  # completed, callback not yet taken
        self._by_prompt: Counter[str] = Counter()
        self._submissions = 0
        self._status_polls = 0
        self._peak = 0
        self._active_peak = 0
        self._rejected_429 = 0
        self._images_served = 0
        self._webhooks: dict[str, int] = {"sent": 0, "failed": 0}

    # -- lifecycle (lock held) ------------------------------------------------------------

    def _promote(self, at: float) -> None:
        limit = self.concurrency_limit
        while self._queue and (limit is None or len(self._running) < limit):
            req = self._queue.popleft()
            latency = req.step.latency_s if req.step.latency_s is not None else self.latency_s
            ends_at = at + latency
            req.state, req.started_at, req.ends_at = "IN_PROGRESS", at, ends_at
            self._running[req.rid] = req
            heapq.heappush(self._ends, (ends_at, next(self._order), req))
        self._peak = max(self._peak, len(self._running))

    def _advance(self, now: float) -> None:
        ends = self._ends
        while ends and ends[0][0] <= now:
            ends_at, _, done = heapq.heappop(ends)
            if self._running.get(done.rid) is not done:  # cancelled meanwhile
                continue
            del self._running[done.rid]
            done.state, done.finished_at = "COMPLETED", ends_at
            if done.webhook_url is not None and done.step.webhook:
                done.webhook_due = True
                self._due.append(done)
            self._promote(ends_at)
        self._promote(now)

    def _snapshot(self, req: Request) -> Request:
        position = self._queue.index(req) if req.state == "IN_QUEUE" else 0
        return dataclasses.replace(req, queue_position=position)

    # -- public API --------------------------------------------------------------------------

    def count_submission(self, prompt: str | None) -> int:
        """Count one submit POST; return how many earlier ones had the same prompt."""
        with self._lock:
            self._submissions += 1
            if prompt is None:
                return 0
            self._by_prompt[prompt] += 1
            return self._by_prompt[prompt] - 1

    def count_rejection(self) -> None:
        """Count one submit answered 429 (limit rejection or `429` directive)."""
        with self._lock:
            self._rejected_429 += 1

    def count_image(self) -> None:
        with self._lock:
            self._images_served += 1

    def add(self, req: Request) -> Request | None:
        """Queue `req`; None (nothing created) when strict mode refuses it as over the limit."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            active = len(self._queue) + len(self._running)
            limit = self.concurrency_limit
            if self.reject_over_limit and limit is not None and active >= limit:
                return None
            self._requests[req.rid] = req
            self._queue.append(req)
            self._active_peak = max(self._active_peak, active + 1)
            self._promote(now)
            return self._snapshot(req)

    def get(self, rid: str, counter: str | None = None) -> Request | None:
        """Look up a request (advancing time); bump `counter` ("status_polls" etc.) if given."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            req = self._requests.get(rid)
            if req is None:
                return None
            if counter is not None:
                setattr(req, counter, getattr(req, counter) + 1)
                polled = counter == "status_polls"
                self._status_polls += polled
                if polled and req.state == "COMPLETED" and req.heard_at is None:
                    req.heard_at = now
            return self._snapshot(req)

    def take_due_webhooks(self) -> list[Request]:
        """Completed requests whose callback is due (each returned once)."""
        with self._lock:
            self._advance(time.monotonic())
            due, self._due = self._due, []
            for req in due:
                req.webhook_due = False
            return [self._snapshot(r) for r in due]

    def count_webhook(self, rid: str, delivered: bool) -> None:
        with self._lock:
            self._webhooks["sent" if delivered else "failed"] += 1
            req = self._requests.get(rid)
            if req is not None and delivered:
                req.webhooks_sent += 1

    def cancel(self, rid: str) -> CancelOutcome:
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            req = self._requests.get(rid)
            if req is None:
                return "unknown"
            req.cancels += 1
            return self._cancel_locked(req, now)

    def _cancel_locked(self, req: Request, now: float) -> CancelOutcome:
        if req.state == "IN_QUEUE":
            self._queue.remove(req)
            req.state, req.finished_at = "CANCELLED", now
            return "queued"
        if req.state == "IN_PROGRESS":
            del self._running[req.rid]
            req.state, req.finished_at = "CANCELLED", now
            self._promote(now)
            return "running"
        return "completed"

    def stats(self, *, summary: bool = False) -> dict[str, Any]:
        """Counters and peaks; with every request and prompt unless ``summary`` (what a
        probe sampling twice a second asks for: the lock is held while this is built)."""
        with self._lock:
            self._advance(time.monotonic())
            stats: dict[str, Any] = {
                "submissions_total": self._submissions,
                "status_polls_total": self._status_polls,
                "queued": len(self._queue),
                "in_progress": len(self._running),
                "in_progress_peak": self._peak,
                "active_peak": self._active_peak,
                "rejected_429_total": self._rejected_429,
                "images_served": self._images_served,
                "webhooks_sent": self._webhooks["sent"],
                "webhooks_failed": self._webhooks["failed"],
            }
            if not summary:
                stats["submissions_by_prompt"] = dict(self._by_prompt)
                stats["requests"] = {rid: r.stats() for rid, r in self._requests.items()}
            return stats

    def reset(self) -> None:
        with self._lock:
            self._clear()

    def configure(
        self,
        latency_s: float | None,
        concurrency_limit: int | EllipsisType | None,
        reject_over_limit: bool | EllipsisType = ...,
    ) -> None:
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            if latency_s is not None:
                self.latency_s = latency_s
            if not isinstance(concurrency_limit, EllipsisType):
                self.concurrency_limit = concurrency_limit
            if not isinstance(reject_over_limit, EllipsisType):
                self.reject_over_limit = reject_over_limit
            self._promote(now)
