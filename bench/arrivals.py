"""Open-loop arrivals: R jobs a second for S seconds, a batch every 100 ms, like a web app.

The batches are sent from a thread of the bench process (not one of the processes
measured); a tick that comes late sends everything due by then, so a slow enqueue shows
as lag (``max_lag_s``), never as a lower rate.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable

from celery import Celery
from sqlalchemy import create_engine, insert
from sqlalchemy.pool import NullPool

from bench import naive
from bench.open_figures import TICK_S, arrivals_due
from imagegen.models import Job, JobStatus, utcnow
from imagegen.worker.jobs.enqueue import enqueue_many
from imagegen.worker.settings import Settings

#: sends one batch of prompts, returns the job ids (as strings) in order
Send = Callable[[list[str]], list[str]]


def prompt(i: int, tag: str) -> str:
    """Unique in a run: the emulator counts submits per prompt, hence per job."""
    return f"bench job {i} {tag}"


class Arrivals(threading.Thread):
    def __init__(self, rate: float, duration_s: float, send: Send) -> None:
        super().__init__(name="bench-arrivals", daemon=True)
        self.rate, self.duration_s, self.send = rate, duration_s, send
        self.tag = uuid.uuid4().hex[:8]
        self.ids: list[str] = []
        self.max_lag_s = 0.0
        self.error: BaseException | None = None
        self.t0 = 0.0
        self._halt = threading.Event()

    def begin(self, t0: float) -> None:
        self.t0 = t0
        self.start()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    @property
    def done(self) -> bool:
        return not self.is_alive()

    def run(self) -> None:
        sent, k, total = 0, 1, arrivals_due(self.rate, self.duration_s, self.duration_s)
        try:
            while sent < total and not self._halt.is_set():
                at = self.t0 + k * TICK_S
                self._halt.wait(max(0.0, at - time.monotonic()))
                now = time.monotonic()
                self.max_lag_s = max(self.max_lag_s, now - at)
                due = arrivals_due(self.rate, now - self.t0, self.duration_s)
                if due > sent:
                    self.ids += self.send([prompt(i, self.tag) for i in range(sent, due)])
                    sent = due
                k = max(k + 1, int((now - self.t0) / TICK_S) + 1)  # skip ticks already past
        except BaseException as exc:  # the main thread reports it and stops the run
            self.error = exc


def ours(settings: Settings, app: Celery, tenants: list[str] | None = None) -> Send:
    """``tenants``: each job goes to one of them at random (the fair share under load)."""
    pick = random.Random(7)

    def send(prompts: list[str]) -> list[str]:
        items: list[str | dict[str, str]] = list(prompts)
        if tenants:
            items = [{"prompt": p, "tenant": pick.choice(tenants)} for p in prompts]
        return [str(i) for i in enqueue_many(items, settings=settings, app=app)]

    return send


def naive_sink(url: str, producer: Celery) -> Send:
    """The naive pattern's web app: a row, then ``send_task`` of ``bench.naive.generate``."""
    engine = create_engine(url, poolclass=NullPool)

    def send(prompts: list[str]) -> list[str]:
        now, ids = utcnow(), [uuid.uuid4() for _ in prompts]
        rows = [
            {"id": i, "prompt": p, "params": {}, "attempts": 0, "model": naive.MODEL}
            | {"status": JobStatus.QUEUED, "created_at": now, "updated_at": now}
            for i, p in zip(ids, prompts, strict=True)
        ]
        with engine.begin() as conn:
            conn.execute(insert(Job), rows)
        with producer.producer_or_acquire() as publisher:
            for i in ids:
                producer.send_task(naive.TASK, args=[str(i)], queue=naive.QUEUE, producer=publisher)
        return [str(i) for i in ids]

    return send
