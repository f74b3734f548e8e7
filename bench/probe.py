"""Sampling a closed-loop run: the job table, the emulator's counters, the host's /proc."""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from bench.host import ApiServer, WorkerHost, active
from bench.proc import machine_busy_s
from bench.runs import TERMINAL, Context, Run, Sample, Second

SAMPLE_EVERY_S = 0.5
TIMELINE_SQL = """
WITH t0 AS (SELECT min(created_at) AS t0 FROM jobs),
events AS (
  SELECT extract(epoch FROM j.started_at - t0) AS s, 'claimed' AS k FROM jobs j, t0
  WHERE j.started_at IS NOT NULL
  UNION ALL SELECT extract(epoch FROM a.started_at - t0), 'sent' FROM job_attempts a, t0
  UNION ALL SELECT extract(epoch FROM a.started_at - t0) + :latency_s, 'fal_done'
  FROM job_attempts a, t0 WHERE a.fal_request_id IS NOT NULL
  UNION ALL SELECT extract(epoch FROM j.finished_at - t0), 'finished' FROM jobs j, t0
  WHERE j.finished_at IS NOT NULL
)
SELECT floor(s)::int AS t, count(*) FILTER (WHERE k = 'claimed'),
  count(*) FILTER (WHERE k = 'sent'), count(*) FILTER (WHERE k = 'fal_done'),
  count(*) FILTER (WHERE k = 'finished')
FROM events GROUP BY 1 ORDER BY 1
"""
COUNTS_SQL = "SELECT status, fal_request_id IS NOT NULL, count(*) FROM jobs GROUP BY 1, 2"
TIMES_SQL = """
SELECT count(*), max(finished_at), extract(epoch FROM max(finished_at) - min(created_at)),
  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)),
  percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
FROM jobs WHERE finished_at IS NOT NULL AND finished_at <= :until
"""


class Probe:
    """Samples a run: one GROUP BY on the jobs table, the emulator's stats, the host's RSS."""

    def __init__(
        self, ctx: Context, host: WorkerHost | None = None, api: ApiServer | None = None
    ) -> None:
        self.ctx, self.host, self.api, self.queries = ctx, host, api, 0
        self.stalled = False
        self._engine = create_engine(ctx.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self._conn: Connection = self._engine.connect()

    def counts(self) -> tuple[Counter[str], int]:
        self.queries += 1
        counts: Counter[str] = Counter()
        in_flight = 0
        for status, sent, n in self._conn.execute(text(COUNTS_SQL)):
            counts[str(status)] += int(n)
            in_flight += int(n) if status == "at_fal" and sent else 0
        return counts, in_flight

    def sample(self, t0: float) -> Sample:
        counts, in_flight = self.counts()
        emulator_active = active(self.ctx.emulator.summary())
        rss_mb, cpu = (self.host.rss_mb(), self.host.cpu_s()) if self.host else (0.0, 0.0)
        t = time.monotonic() - t0
        machine, emulator_cpu = machine_busy_s(), self.ctx.emulator.cpu_s()
        sample = Sample(t, counts, in_flight, emulator_active, rss_mb, cpu, machine, emulator_cpu)
        if self.api is not None:
            sample.api_rss_mb, sample.api_cpu_s = self.api.rss_mb(), self.api.cpu_s()
        return sample

    def dead(self) -> bool:
        """The worker host (or the API) is gone: waiting longer is pointless."""
        host_dead = self.host is not None and not self.host.alive()
        return host_dead or (self.api is not None and not self.api.alive())

    def watch(self, n: int, t0: float, until: float, stall_s: float | None = None) -> list[Sample]:
        """Every 0.5 s until n jobs are terminal, ``until`` passes or the host died.

        With ``stall_s``: also when no job became terminal for that long (``self.stalled``).
        """
        samples: list[Sample] = []
        every = self.ctx.args.print_every
        next_print = t0 + every
        last_terminal, last_change = -1, t0
        while True:
            tick = time.monotonic()
            sample = self.sample(t0)
            samples.append(sample)
            terminal = sum(v for k, v in sample.counts.items() if k in TERMINAL)
            if terminal != last_terminal:
                last_terminal, last_change = terminal, tick
            self.stalled = stall_s is not None and tick - last_change >= stall_s
            if terminal >= n or tick >= until or self.dead() or self.stalled:
                return samples
            if tick >= next_print:
                api = f" api cpu {sample.api_cpu_s:.1f}s" if self.api is not None else ""
                print(
                    f"  t={sample.t:5.1f}s {dict(sample.counts)} in flight {sample.in_flight_db}"
                    f" (emulator {sample.emulator_active}) rss"
                    f" {sample.rss_mb + sample.api_rss_mb:.0f} MB"
                    f" worker cpu {sample.cpu_s:.1f}s{api}",
                    file=sys.stderr,
                )
                next_print = tick + every
            time.sleep(max(0.0, tick + SAMPLE_EVERY_S - time.monotonic()))

    def times(self, run: Run, until: datetime) -> datetime | None:
        row = self._conn.execute(text(TIMES_SQL), {"until": until}).one()
        run.done, last = int(row[0]), row[1]
        run.span_s = float(row[2] or 0.0)
        run.p50_s, run.p95_s = (None, None) if row[3] is None else (float(row[3]), float(row[4]))
        run.final = self.counts()[0]
        return last

    def timeline(self, latency_s: float) -> list[Second]:
        """Second by second: where a wave's jobs were (the emulator starts a request when it
        arrives, under the account limit the bench sets, so fal is done at sent + latency)."""
        rows = self._conn.execute(text(TIMELINE_SQL), {"latency_s": latency_s})
        return [Second(*map(int, row)) for row in rows]

    def webhooks_stored(self) -> int:
        return int(self._conn.execute(text("SELECT count(*) FROM fal_webhooks")).scalar_one())

    def close(self) -> None:
        self._conn.close()
        self._engine.dispose()


def peak_rate(run: Run, value: Any, span: int = 4) -> float:
    """The largest d(value)/dt over ~2 s (``span`` samples) of the run."""
    samples = run.samples
    span = max(1, min(span, len(samples) - 1))
    pairs = zip(samples, samples[span:], strict=False)
    return max(((value(b) - value(a)) / (b.t - a.t) for a, b in pairs if b.t > a.t), default=0.0)


def machine_busy(run: Run) -> float:
    if len(run.samples) < 2:
        return 0.0
    (busy0, total0), (busy1, total1) = run.samples[0].machine, run.samples[-1].machine
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def peak_machine_busy(run: Run, span: int = 4) -> float:
    samples = run.samples
    span = max(1, min(span, len(samples) - 1))
    pairs = zip(samples, samples[span:], strict=False)
    shares = (
        (b.machine[0] - a.machine[0]) / (b.machine[1] - a.machine[1])
        for a, b in pairs
        if b.machine[1] > a.machine[1]
    )
    return max(shares, default=0.0)
