"""When to ask fal about a request next: learned per model from how long requests took.

Before a model has ``MIN_SAMPLES`` latencies, checks start at IMAGEGEN_POLL_INITIAL_S and
grow by IMAGEGEN_POLL_FACTOR (capped at IMAGEGEN_POLL_MAX_S) for one request in
``PROBE_EVERY``; the others wait ``COLD_WAIT`` times longer between checks. Once learned,
a request is first checked at the ``FIRST_QUANTILE`` of its model's recent latencies (most
are done by then: about one status call each), and after that in short steps.

A latency here is the planned time of the check that first found the request COMPLETED
(from its submit), not when it was sent: otherwise every round would start later by the
time a check waits for its tick (until the model is learned, the time it was sent). It
is an upper bound: a request done long before its first check looks as slow as the
check. So the samples can only say "slower", never "faster"; a few probe requests (one
in ``PROBE_EVERY``, by job id) are checked earlier, at ``PROBE_AT`` of the first-check
point, and when most probes are already done there the samples are scaled down to it.
Pure: no clock, no I/O; the poller feeds it what it hears.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field

#: latencies a model needs before its schedule is learned, and how many are kept
MIN_SAMPLES = 8
WINDOW = 200
#: the quantile of recent latencies a request is first checked at
FIRST_QUANTILE = 0.85
#: checks after the first one: this fraction of the median latency apart (within limits)
STEP_FRACTION = 0.1
#: one request in PROBE_EVERY is first checked at PROBE_AT x the first-check point
PROBE_EVERY = 8
PROBE_AT = 0.85
#: until a model is learned only one request in PROBE_EVERY (its scouts) is checked on the
#: growing schedule; the others' steps are COLD_WAIT times longer (a first wave of
#: thousands would otherwise cost a dozen status calls each)
COLD_WAIT = 6
#: probe outcomes looked at (the latest), and the share done that means "faster now"
PROBE_WINDOW = 8
PROBES_DONE_TO_SPEED_UP = FIRST_QUANTILE
#: probes planned but not heard of (a request collected by another poller): forgotten
PROBES_PENDING_MAX = 10_000


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of ``values`` (sorted), by linear interpolation."""
    if not values:
        raise ValueError("quantile of no values")
    position = q * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


@dataclass
class _Model:
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    probes: deque[bool] = field(default_factory=lambda: deque(maxlen=PROBE_WINDOW))
    #: sorted samples and the quantiles, recomputed when a sample comes
    first_s: float | None = None
    median_s: float | None = None

    def add(self, latency_s: float) -> None:
        self.samples.append(latency_s)
        self._refresh()

    def scale(self, factor: float) -> None:
        self.samples = deque((s * factor for s in self.samples), maxlen=WINDOW)
        self.probes.clear()
        self._refresh()

    def _refresh(self) -> None:
        if len(self.samples) < MIN_SAMPLES:
            return
        ordered = sorted(self.samples)
        self.first_s = quantile(ordered, FIRST_QUANTILE)
        self.median_s = quantile(ordered, 0.5)


class Schedule:
    """Check times, as seconds since the request's submit, per model."""

    def __init__(self, *, initial_s: float, max_s: float, factor: float) -> None:
        self.initial_s, self.max_s, self.factor = initial_s, max(max_s, initial_s), factor
        self._models: dict[str, _Model] = {}
        self._probes: dict[uuid.UUID, str] = {}

    def _model(self, model: str) -> _Model:
        return self._models.setdefault(model, _Model())

    def learned(self, model: str) -> bool:
        return self._model(model).first_s is not None

    def first_check_delay_s(self, model: str) -> float:
        """When to check a request just submitted (seconds after its submit)."""
        first = self._model(model).first_s
        return self.initial_s if first is None else max(first, self.initial_s)

    def _step_s(self, model: str, elapsed_s: float, job_id: uuid.UUID) -> float:
        median = self._model(model).median_s
        if median is None:  # not learned: scouts grow geometrically, the rest wait longer
            step = min(max(elapsed_s * (self.factor - 1.0), self.initial_s), self.max_s)
            return step if job_id.int % PROBE_EVERY == 0 else step * COLD_WAIT
        return min(max(median * STEP_FRACTION, self.initial_s), self.max_s)

    def plan(self, model: str, job_id: uuid.UUID, planned_s: float) -> float | None:
        """A request came due at ``planned_s`` after its submit: None to check it now, or
        the time to check it instead (its check was planned before the model was learned,
        or by the submit stage, far earlier than its learned first check)."""
        first = self._model(model).first_s
        if first is None or planned_s >= first * PROBE_AT * 0.5:
            return None
        if job_id.int % PROBE_EVERY == 0:
            self._remember_probe(job_id, model)
            return max(first * PROBE_AT, self.initial_s)
        return self.first_check_delay_s(model)

    def next_check_s(self, model: str, job_id: uuid.UUID, checked_s: float) -> float:
        """A check planned ``checked_s`` after the submit found the request not done."""
        self._heard_probe(job_id, done=False)
        first = self._model(model).first_s
        if first is not None and checked_s < first:
            return first
        return checked_s + self._step_s(model, checked_s, job_id)

    def completed(
        self, model: str, job_id: uuid.UUID, checked_s: float, sent_s: float | None = None
    ) -> None:
        """A check planned ``checked_s`` after the submit (and sent ``sent_s`` after it)
        found the request COMPLETED. Until the model is learned the time it was sent is
        the sample: steps planned before then are coarse, and a late check planned before
        the request finished would say it was faster than it is."""
        self._heard_probe(job_id, done=True)
        state = self._model(model)
        sample = checked_s if state.first_s is not None or sent_s is None else sent_s
        state.add(max(sample, 0.0))

    def _remember_probe(self, job_id: uuid.UUID, model: str) -> None:
        if len(self._probes) >= PROBES_PENDING_MAX:
            self._probes.pop(next(iter(self._probes)))
        self._probes[job_id] = model

    def _heard_probe(self, job_id: uuid.UUID, *, done: bool) -> None:
        model = self._probes.pop(job_id, None)
        if model is None:
            return
        state = self._model(model)
        state.probes.append(done)
        if len(state.probes) == PROBE_WINDOW:
            share = sum(state.probes) / PROBE_WINDOW
            if share >= PROBES_DONE_TO_SPEED_UP:
                state.scale(PROBE_AT)  # most were done earlier: the samples overstate
