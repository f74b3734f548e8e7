"""Figures from a closed-loop throughput run: a table and one JSON line (the last line)."""

from __future__ import annotations

import argparse
import json
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from bench.output import NONE, console, fmt, print_events, rounded, timeline_table
from bench.probe import machine_busy, peak_machine_busy, peak_rate

if TYPE_CHECKING:
    from bench.runs import Run

TERMINAL = frozenset({"succeeded", "refused", "failed", "cancelled"})


@dataclass
class Figures:
    mode: str  # ours: "polling" or "webhook"
    jobs: int
    done: int
    jobs_per_s: float
    p50_s: float | None
    p95_s: float | None
    enqueue_jobs_per_s: float
    peak_in_flight: int  # the emulator's active_peak (queued + running at fal)
    peak_in_flight_db: int | None  # max over samples: running with a fal request id (ours)
    peak_in_progress: int  # the emulator's in_progress_peak
    ideal_jobs_per_s: float | None
    achieved_over_ideal: float | None
    cpu_ms_per_job: float | None  # the host: workers, plus the API in webhook mode
    startup_cpu_s: float
    peak_rss_mb: float  # the host: workers, plus the API in webhook mode
    status_requests_per_job: float | None
    #: seconds from fal completing a request to the first status poll that heard it
    heard_p50_s: float | None
    heard_p95_s: float | None
    result_gets_per_job: float | None
    db_transactions_per_job: float | None
    db_statements_per_job: float | None
    statuses: dict[str, int]
    window_s: float | None
    stalled_s: float | None  # ours: stopped because no job finished for this long
    peak_worker_cores: float  # max over ~2 s windows of worker CPU s per s
    machine_busy: float  # whole machine (workers, emulator, Postgres, Redis, bench) over the run
    peak_machine_busy: float  # the same, busiest ~2 s
    emulator_cpu_s: float  # the emulator's CPU over the run (a separate process)
    # webhook mode (None otherwise)
    api_cpu_ms_per_job: float | None
    api_peak_rss_mb: float | None
    webhooks_sent: int | None  # callbacks the emulator delivered (2xx)
    webhooks_failed: int | None  # callbacks it gave up on after its retries
    webhooks_stored: int | None  # rows in fal_webhooks: callbacks the API verified and kept
    requests_without_webhook: int | None  # completed at the emulator, never delivered


def polls_per_job(run: Run) -> float | None:
    """Status polls / N."""
    return float(run.emulator.get("status_polls_total", 0)) / run.jobs if run.jobs else None


def heard_after(run: Run) -> tuple[float | None, float | None]:
    """p50 and p95 of how late a status poll heard that fal had completed a request
    (the emulator notes the first poll that answered COMPLETED; none in webhook mode)."""
    late = sorted(
        float(r["heard_after_s"])
        for r in run.emulator.get("requests", {}).values()
        if r.get("heard_after_s") is not None
    )
    if not late:
        return None, None
    return late[len(late) // 2], late[min(len(late) - 1, round(0.95 * (len(late) - 1)))]


def result_gets_per_job(run: Run) -> float | None:
    return sum(int(r["result_gets"]) for r in run.emulator["requests"].values()) / run.jobs


WEBHOOK_FIGURES = (
    "api_cpu_ms_per_job",
    "api_peak_rss_mb",
    "webhooks_sent",
    "webhooks_failed",
    "webhooks_stored",
    "requests_without_webhook",
)


def webhook_figures(run: Run, done: int) -> dict[str, Any]:
    if run.mode != "webhook":
        return dict.fromkeys(WEBHOOK_FIGURES)
    stats = run.emulator
    completed = [r for r in stats["requests"].values() if r["state"] == "COMPLETED"]
    return {
        "api_cpu_ms_per_job": None if run.api_cpu_s is None else per_job(run.api_cpu_s * 1e3, done),
        "api_peak_rss_mb": max((s.api_rss_mb for s in run.samples), default=0.0),
        "webhooks_sent": int(stats.get("webhooks_sent", 0)),
        "webhooks_failed": int(stats.get("webhooks_failed", 0)),
        "webhooks_stored": run.webhooks_stored,
        "requests_without_webhook": sum(1 for r in completed if not r.get("webhooks_sent")),
    }


def per_job(value: float | None, jobs: int) -> float | None:
    return None if value is None or jobs == 0 else value / jobs


def figures(run: Run, args: argparse.Namespace) -> Figures:
    done = run.done
    rate = done / run.span_s if run.span_s > 0 else 0.0
    peak = int(run.emulator.get("active_peak", 0))
    peak_db = max((s.in_flight_db for s in run.samples), default=0)
    # the transactions ran until the workers stopped: divide by every job finished by then
    finished = sum(n for status, n in run.final.items() if status in TERMINAL)
    ideal = min(args.fal_concurrency, peak, run.jobs) / args.latency if args.latency > 0 else None
    heard = heard_after(run)
    return Figures(
        mode=run.mode,
        jobs=run.jobs,
        done=done,
        jobs_per_s=rate,
        p50_s=run.p50_s,
        p95_s=run.p95_s,
        enqueue_jobs_per_s=run.jobs / run.enqueue_s if run.enqueue_s > 0 else 0.0,
        peak_in_flight=peak,
        peak_in_flight_db=peak_db,
        peak_in_progress=int(run.emulator.get("in_progress_peak", 0)),
        ideal_jobs_per_s=ideal,
        achieved_over_ideal=rate / ideal if ideal else None,
        cpu_ms_per_job=per_job(run.cpu_s * 1000, done),
        startup_cpu_s=run.startup_cpu_s,
        peak_rss_mb=max((s.rss_mb + s.api_rss_mb for s in run.samples), default=0.0),
        status_requests_per_job=polls_per_job(run),
        heard_p50_s=heard[0],
        heard_p95_s=heard[1],
        result_gets_per_job=result_gets_per_job(run),
        db_transactions_per_job=per_job(run.xacts, finished),
        db_statements_per_job=per_job(run.statements, finished),
        statuses=dict(run.final),
        window_s=run.window_s,
        stalled_s=run.stalled_s,
        peak_worker_cores=peak_rate(run, lambda s: s.cpu_s + s.api_cpu_s),
        machine_busy=machine_busy(run),
        peak_machine_busy=peak_machine_busy(run),
        emulator_cpu_s=run.samples[-1].emulator_cpu_s - run.samples[0].emulator_cpu_s,
        **webhook_figures(run, done),
    )


def rows(ours: Figures) -> list[tuple[str, str]]:
    def row(name: str, get: Any, spec: str = ".1f") -> tuple[str, str]:
        return name, fmt(get(ours), spec)

    host = ", workers + API" if ours.mode == "webhook" else ""
    both = " (workers + API)" if ours.mode == "webhook" else ""
    return [
        row("jobs", lambda f: f.jobs, "d"),
        row("jobs/s end to end", lambda f: f.jobs_per_s, ".2f"),
        row("p50 created→finished, s", lambda f: f.p50_s, ".2f"),
        row("p95 created→finished, s", lambda f: f.p95_s, ".2f"),
        row("enqueue jobs/s", lambda f: f.enqueue_jobs_per_s, ".0f"),
        row("peak in flight (emulator active_peak)", lambda f: f.peak_in_flight, "d"),
        row("peak in flight (DB: at_fal + request id)", lambda f: f.peak_in_flight_db, "d"),
        row("peak running at the emulator", lambda f: f.peak_in_progress, "d"),
        row("ideal jobs/s = min(C, peak, N)/latency", lambda f: f.ideal_jobs_per_s, ".2f"),
        row("achieved / ideal", lambda f: f.achieved_over_ideal, ".1%"),
        row(f"worker CPU ms per job (run{host})", lambda f: f.cpu_ms_per_job, ".2f"),
        row("  of which the API (webhook receiver)", lambda f: f.api_cpu_ms_per_job, ".2f"),
        row(f"worker CPU at start, s (not counted{host})", lambda f: f.startup_cpu_s, ".2f"),
        row(f"worker CPU, busiest 2 s, cores{both}", lambda f: f.peak_worker_cores, ".2f"),
        row("machine CPU busy over the run (2 cores)", lambda f: f.machine_busy, ".0%"),
        row("machine CPU busy, busiest 2 s", lambda f: f.peak_machine_busy, ".0%"),
        row("emulator CPU over the run, s", lambda f: f.emulator_cpu_s, ".1f"),
        row(f"peak RSS of the worker host, MB{both}", lambda f: f.peak_rss_mb, ".0f"),
        row("  of which the API, MB", lambda f: f.api_peak_rss_mb, ".0f"),
        row("status requests per job", lambda f: f.status_requests_per_job, ".1f"),
        row("fal done -> a poll heard it, p50 s", lambda f: f.heard_p50_s, ".2f"),
        row("fal done -> a poll heard it, p95 s", lambda f: f.heard_p95_s, ".2f"),
        row("result GETs per job", lambda f: f.result_gets_per_job, ".2f"),
        row("webhooks delivered (emulator)", lambda f: f.webhooks_sent, "d"),
        row("webhooks given up (emulator)", lambda f: f.webhooks_failed, "d"),
        row("webhooks stored (fal_webhooks rows)", lambda f: f.webhooks_stored, "d"),
        row("completed requests with no webhook", lambda f: f.requests_without_webhook, "d"),
        row("DB transactions per job", lambda f: f.db_transactions_per_job, ".2f"),
        row("DB statements per job", lambda f: f.db_statements_per_job, ".2f"),
    ]


def table(args: argparse.Namespace, ours: Figures) -> Table:
    title = (
        f"throughput ({ours.mode} mode, closed loop): {args.jobs} jobs, latency "
        f"{args.latency:g} s, fal concurrency {args.fal_concurrency}, {args.processes} x "
        f"threads {args.threads}"
        + (f", round trip {args.round_trip:g} s" if args.round_trip else "")
    )
    result = Table(title=title)
    result.add_column("figure", justify="left")
    result.add_column(f"ours ({ours.mode})", justify="right")
    for name, value in rows(ours):
        if value == NONE and name.startswith(("DB statements", "webhook", "completed requests")):
            continue  # pg_stat_statements not loaded, or a webhook-mode row in a polling run
        result.add_row(name, value)
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(ours.statuses.items()))
    result.add_row("final statuses", statuses)
    if ours.stalled_s is not None:
        result.add_row("STALLED", f"no job finished for {ours.stalled_s:.0f} s: stopped")
    if ours.done < ours.jobs:
        result.add_row("NOT FINISHED", f"{ours.jobs - ours.done} jobs; jobs/s over time watched")
    return result


def summary(args: argparse.Namespace, ours: Figures) -> dict[str, Any]:
    data: dict[str, Any] = {
        "mode": ours.mode,
        "jobs_per_s": round(ours.jobs_per_s, 3),
        "peak_in_flight": ours.peak_in_flight,
        "peak_in_flight_db": ours.peak_in_flight_db,
        "peak_in_progress": ours.peak_in_progress,
        "achieved_over_ideal": rounded(ours.achieved_over_ideal, 3),
        "ideal_jobs_per_s": rounded(ours.ideal_jobs_per_s, 3),
        "peak_rss_mb": round(ours.peak_rss_mb, 1),
        "worker_cpu_ms_per_job": rounded(ours.cpu_ms_per_job, 2),
        "status_requests_per_job": rounded(ours.status_requests_per_job, 2),
        "heard_p50_s": rounded(ours.heard_p50_s, 3),
        "heard_p95_s": rounded(ours.heard_p95_s, 3),
        "result_gets_per_job": rounded(ours.result_gets_per_job, 2),
        "p50_s": rounded(ours.p50_s, 3),
        "p95_s": rounded(ours.p95_s, 3),
        "enqueue_jobs_per_s": round(ours.enqueue_jobs_per_s, 1),
        "db_transactions_per_job": rounded(ours.db_transactions_per_job, 2),
        "statuses": ours.statuses,
        "stalled": ours.stalled_s is not None,
        "finished": ours.done,
        "peak_worker_cores": round(ours.peak_worker_cores, 2),
        "machine_cpu_busy": round(ours.machine_busy, 3),
        "machine_cpu_busy_peak": round(ours.peak_machine_busy, 3),
        "api_cpu_ms_per_job": rounded(ours.api_cpu_ms_per_job, 2),
        "api_peak_rss_mb": rounded(ours.api_peak_rss_mb, 1),
        "webhooks_sent": ours.webhooks_sent,
        "webhooks_failed": ours.webhooks_failed,
        "webhooks_stored": ours.webhooks_stored,
        "requests_without_webhook": ours.requests_without_webhook,
        "jobs": args.jobs,
        "latency_s": args.latency,
        "round_trip_s": args.round_trip,
        "fal_concurrency": args.fal_concurrency,
        "processes": args.processes,
        "threads": args.threads,
    }
    if ours.db_statements_per_job is not None:
        data["db_statements_per_job"] = round(ours.db_statements_per_job, 2)
    return data


def render(args: argparse.Namespace, run: Run | None, passed: list[str], work: Path) -> None:
    if run is None:
        return
    ours = figures(run, args)
    console.print(table(args, ours))
    console.print(f"IMAGEGEN_* passed through from the environment: {passed or 'none'}")
    print_events("ours", run.log_events)
    if run.timeline:
        console.print(timeline_table(run))
    if run.mode == "webhook":
        print_events("ours", run.api_log_events, "API log (imagegen api)")
    if args.keep_logs:
        console.print(f"logs kept in {work}", highlight=False)
    data = summary(args, ours)
    if run.timeline:  # [t, claimed, sent, done at fal, finished] a second
        data["timeline"] = [astuple(second) for second in run.timeline]
    print(json.dumps(data), flush=True)
