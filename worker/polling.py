"""When to poll fal: learn how long generations take, poll near the end of one."""

from __future__ import annotations

import threading


class LatencyEstimate:
    """How long this model's generations take here (an EWMA), to time the first poll.

    Fed with the last time fal still said "not done" (a lower bound), so that polls
    delayed by a busy host do not inflate it.

    Polling at 1 s, 1.5 s, ... up to IMAGEGEN_POLL_MAX_S costs about 15 status requests for
    a 60 s generation; once the typical duration is known, the first poll waits for 85 % of
    it and the schedule restarts from there: about 4 requests a job.
    """

    def __init__(self, weight: float = 0.2) -> None:
        self._weight = weight
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, model: str, seconds: float) -> None:
        with self._lock:
            old = self._seconds.get(model)
            self._seconds[model] = seconds if old is None else old + self._weight * (seconds - old)

    def first_wait_s(self, model: str, default_s: float) -> float:
        """How long to wait before the first poll: ``default_s`` until something is known.

        Below ``default_s`` too: generations that take a fraction of a second (an emulator,
        a fast model) are polled that soon rather than holding their worker for a second.
        """
        with self._lock:
            typical = self._seconds.get(model)
        return default_s if typical is None else 0.85 * typical

    def near_end_step_s(self, model: str, elapsed_s: float) -> float | None:
        """Around the typical end of a generation (until 1.3x it), poll every 5 % of it
        (at least 0.25 s): a completion is heard soon after it happens, for about four
        more polls. None outside that window, or while nothing is known."""
        with self._lock:
            typical = self._seconds.get(model)
        if typical is None or elapsed_s > 1.3 * typical:
            return None
        return max(0.25, 0.05 * typical)
