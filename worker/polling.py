"""When to poll fal: learn how long generations take, poll near the end of one.

Per model, a window of recent generation times. An observation is the last time fal still
said "not done" (a lower bound: a busy host that polls late does not inflate it), or, when
the very first poll already found the request done, that time less one near-end step (it
may have been shorter, by up to the step we poll at: so the estimate comes down when fal
gets faster; 0.9x it while nothing is known yet).

* First poll of a fresh request: at the 10th percentile of the window.
* Then every 5 % of the median (at least 0.25 s) until 1.3x the 90th percentile, so that a
  completion is heard soon after it happens; past that, the growing schedule. A poll that
  comes before the 10th percentile of when recent requests were *heard* done waits only
  until then (at least 0.25 s): a completion is never heard before it happens, so where
  generations take a steady time the second poll comes just past their end, not a whole step
  after the first (which heard a wave's completions ~0.6 s late at the median, ~1.1 s at the
  95th percentile, each of them holding a fal slot that long).
* While nothing is known about a model, a few scouts per process poll every
  IMAGEGEN_POLL_INITIAL_S and the other fresh requests wait for what the scouts learn
  (woken at once when it is known, or after ``news_wait_s``): a thousand first requests do
  not each spend ten polls finding out that a generation takes half a minute. (A fresh
  process pays this once per model: four scouts polling for a minute.)

For a generation of a steady 30 s that is about two status requests a job; polling at
1 s, 1.5 s, ... up to IMAGEGEN_POLL_MAX_S from the start costs about fifteen for 60 s.
"""

from __future__ import annotations

import threading
from collections import deque


class _Model:
    __slots__ = ("heard", "heard_q10", "quantiles", "samples", "scouts")

    def __init__(self, window: int) -> None:
        self.samples: deque[float] = deque(maxlen=window)
        #: when each recent request was heard done (an upper bound), and its 10th percentile
        self.heard: deque[float] = deque(maxlen=window)
        self.heard_q10: float | None = None
        #: (10th, 50th, 90th percentile) of the window, None while it is empty; replaced
        #: whole, so that the hundreds of threads timing their polls read it without a lock
        self.quantiles: tuple[float, float, float] | None = None
        self.scouts = 0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        ordered = sorted(self.samples)
        self.quantiles = (_at(ordered, 0.1), _at(ordered, 0.5), _at(ordered, 0.9))

    def add_heard(self, seconds: float) -> None:
        self.heard.append(seconds)
        self.heard_q10 = _at(sorted(self.heard), 0.1)


def _at(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of a sorted, non-empty list (the nearest rank)."""
    return ordered[round(q * (len(ordered) - 1))]


MIN_STEP_S = 0.25


def _step(q50: float) -> float:
    """The near-end poll interval: 5 % of the median, at least 0.25 s."""
    return max(MIN_STEP_S, 0.05 * q50)


class LatencyEstimate:
    """How long this model's generations take here, to time the status polls."""

    def __init__(self, window: int = 200, scouts: int = 4, news_wait_s: float = 300.0) -> None:
        self._window, self._scouts, self.news_wait_s = window, scouts, news_wait_s
        self._models: dict[str, _Model] = {}
        self._news = threading.Condition()

    def _model(self, model: str) -> _Model:
        entry = self._models.get(model)
        if entry is None:
            entry = self._models[model] = _Model(self._window)
        return entry

    def observe(
        self,
        model: str,
        seconds: float,
        *,
        done_at_first_poll: bool = False,
        heard_s: float | None = None,
    ) -> None:
        """A fresh request is done: ``seconds`` is when fal last said "not done" (or, with
        ``done_at_first_poll``, when the first poll found it done); ``heard_s`` when a poll
        heard it done."""
        with self._news:
            entry = self._model(model)
            known = entry.quantiles
            if heard_s is not None:
                entry.add_heard(heard_s)
            if done_at_first_poll:
                seconds = 0.9 * seconds if known is None else max(0.0, seconds - _step(known[1]))
            entry.add(seconds)
            if known is None:
                self._news.notify_all()

    # The readers below run in every polling thread, several times a poll: they read the
    # model's quantiles (one tuple, replaced whole) without taking the lock.

    def _quantiles(self, model: str) -> tuple[float, float, float] | None:
        entry = self._models.get(model)
        return None if entry is None else entry.quantiles

    def known(self, model: str) -> bool:
        return self._quantiles(model) is not None

    def first_wait_s(self, model: str, default_s: float) -> float:
        """How long to wait before the first poll: ``default_s`` until something is known.

        Below ``default_s`` too: generations that take a fraction of a second (an emulator,
        a fast model) are polled that soon rather than holding their worker for a second.
        """
        known = self._quantiles(model)
        return default_s if known is None else known[0]

    def near_end_step_s(self, model: str, elapsed_s: float) -> float | None:
        """Near the typical end (until 1.3x the 90th percentile), poll every 5 % of the
        median, at least 0.25 s; before the 10th percentile of when requests were heard
        done, no later than it. None outside that window, or while nothing is known."""
        entry = self._models.get(model)
        known = None if entry is None else entry.quantiles
        if entry is None or known is None or elapsed_s > 1.3 * known[2]:
            return None
        step = _step(known[1])
        heard = entry.heard_q10
        if heard is not None and elapsed_s < heard:  # not done yet: again just as they were
            return min(step, max(MIN_STEP_S, heard - elapsed_s))
        return step

    def enlist_scout(self, model: str) -> bool:
        """Become one of the few requests polled while nothing is known (False: wait)."""
        with self._news:
            entry = self._model(model)
            if entry.quantiles is not None or entry.scouts >= self._scouts:
                return False
            entry.scouts += 1
            return True

    def discharge_scout(self, model: str) -> None:
        with self._news:
            self._model(model).scouts -= 1
            self._news.notify_all()  # a free scout's place: a waiter may take it

    def await_news(self, model: str, timeout_s: float) -> None:
        """Sleep until something is known about ``model``, a scout's place frees, or timeout."""
        with self._news:
            entry = self._model(model)
            if entry.quantiles is None and entry.scouts >= self._scouts:
                self._news.wait(timeout_s)
