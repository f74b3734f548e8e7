"""Throughput of the real pipeline against the fal emulator on the same host.

Open loop (issue 22): `python -m bench.throughput --rate R --duration S --latency L
--fal-concurrency C [--webhook] [--flower] [--workers N] [--pollers P] [--fleet-cap K]
[--naive]`: jobs arrive at R a second for S seconds, in batches every 100 ms through
`enqueue_many` (from this process, which is not measured), against N Celery workers, P
pollers (and in webhook mode `imagegen api` as fal's callback receiver); sampled every
second, drained (bounded), stopped. `--naive` runs the naive pattern (`bench/naive.py`:
`fal_client.subscribe` in a prefork task) under the same arrivals instead: the baseline
for jobs in flight and status requests. See bench/open_loop.py and docs/throughput.md.

Closed loop: `python -m bench.throughput --jobs N --latency L --fal-concurrency C
[--processes 2] [--threads 500] [--pollers 1] [--webhook] [--timeout 900] [--stall-after S]
[--print-every 10] [--timeline]`: N jobs queued at once, watched until terminal.

Both print one JSON object as the last line. Redis: a leased free database 1-15 unless
`--redis-url`; two runs on one Redis database refuse to overlap.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from bench import closed_loop, open_loop
from bench.host import one_run_at_a_time
from imagegen.worker.logs import configure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--jobs", type=int, help="closed loop: N jobs queued at once")
    load.add_argument("--rate", type=float, help="open loop: jobs enqueued a second")
    parser.add_argument("--latency", type=float, required=True, help="emulator latency, s")
    parser.add_argument("--fal-concurrency", type=int, required=True, help="C")
    parser.add_argument(
        "--round-trip",
        type=float,
        default=0.0,
        help="s added to every fal answer (the emulator's --round-trip): fal over a network",
    )
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="webhook mode: fal calls back to `imagegen api` (started here)",
    )
    parser.add_argument(
        "--pollers", type=int, default=1, help="`imagegen poller` processes (both modes)"
    )
    parser.add_argument("--print-every", type=float, default=10.0, help="progress lines, s")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--redis-url", help="a Redis database to flush and use (default: any free one of 1-15)"
    )
    _closed_loop_args(parser.add_argument_group("closed loop (--jobs)"))
    _open_loop_args(parser.add_argument_group("open loop (--rate)"))
    return parser.parse_args(argv)


def _closed_loop_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--processes", type=int, default=2)
    group.add_argument("--threads", type=int, default=500)
    group.add_argument("--timeout", type=float, default=900.0)
    group.add_argument(
        "--stall-after",
        type=float,
        default=None,
        help="stop when no job finished for this long, s (default max(120, 3 x latency + 60))",
    )
    group.add_argument(
        "--timeline",
        action="store_true",
        help="also print, second by second, jobs claimed, sent to fal, done at fal, finished",
    )


def _open_loop_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--duration", type=float, help="s of arrivals")
    group.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    group.add_argument("--concurrency", type=int, default=32, help="threads a worker")
    group.add_argument("--fleet-cap", type=int, help="IMAGEGEN_FAL_CONCURRENCY (default C)")
    group.add_argument("--flower", action="store_true", help="check every outcome in Flower")
    group.add_argument(
        "--tenants", type=int, default=0, help="N tenants, each job's at random (0: default)"
    )
    group.add_argument(
        "--naive", action="store_true", help="the naive pattern under the same arrivals"
    )
    group.add_argument(
        "--drain-timeout",
        type=float,
        help="s to wait after the arrivals for every job to end (default 2 x latency + 60)",
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: everything started stops


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rate is not None and args.duration is None:
        raise SystemExit("--rate needs --duration")
    configure(level=logging.ERROR)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with one_run_at_a_time(args.redis_url, "bench.throughput") as args.redis_url:
            if args.rate is not None:
                return open_loop.measure(args)
            return closed_loop.measure(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
