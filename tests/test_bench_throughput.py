"""bench.throughput: the open-loop mode's pure parts (fast), and a tiny closed-loop run (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest

from bench import throughput
from bench.arrivals import Arrivals
from bench.open_figures import (
    KEYS,
    JobFacts,
    Outcome,
    Tick,
    arrivals_due,
    completed_per_s,
    duplicate_submissions,
    flower_outcomes_missing,
    lost,
    percentile,
    schedule,
    status_requests_per_job,
    steady,
    submit_waits,
    summary,
)
from bench.proc import CpuLedger, stat_cpu_s, tree_cpu


def test_the_arrivals_come_every_100_ms_at_the_rate_and_add_up_to_rate_x_duration() -> None:
    batches = schedule(167, 240)
    assert len(batches) == 2400 and sum(batches) == 167 * 240
    assert set(batches) == {16, 17}  # spread evenly, never bunched
    small = schedule(5, 20)
    assert sum(small) == 100 and max(small) == 1
    assert small[:4] == [0, 1, 0, 1]  # one job every 0.2 s
    assert sum(schedule(2.5, 3)) == 7  # floor(rate x duration)


def test_a_late_tick_sends_everything_due_by_then_and_never_more_than_the_run() -> None:
    assert arrivals_due(10, 0.35, 5) == 3
    assert arrivals_due(10, 2.0, 5) == 20  # two seconds late: the whole backlog at once
    assert arrivals_due(10, 99.0, 5) == 50
    assert arrivals_due(10, 0.0, 5) == 0


def test_the_arrivals_thread_sends_unique_prompts_in_batches_at_the_rate() -> None:
    batches: list[list[str]] = []
    lock = threading.Lock()

    def send(prompts: list[str]) -> list[str]:
        with lock:
            batches.append(prompts)
        return [f"id-{p}" for p in prompts]

    load = Arrivals(rate=40, duration_s=0.5, send=send)
    start = time.monotonic()
    load.begin(start)
    load.join(timeout=5)
    took = time.monotonic() - start
    prompts = [p for batch in batches for p in batch]
    assert load.error is None and load.done
    assert len(prompts) == len(set(prompts)) == 20 and load.ids == [f"id-{p}" for p in prompts]
    assert all(len(batch) <= 8 for batch in batches), batches  # 4 a tick, bar scheduling slop
    assert 0.45 <= took < 2.0


def test_an_arrivals_failure_is_kept_for_the_main_thread() -> None:
    def send(prompts: list[str]) -> list[str]:
        raise ConnectionError("postgres went away")

    load = Arrivals(rate=50, duration_s=0.3, send=send)
    load.begin(time.monotonic())
    load.join(timeout=5)
    assert isinstance(load.error, ConnectionError)


def _stat(comm: str, utime: int, stime: int, cutime: int, cstime: int) -> str:
    after = ["S", "1", "1", "1", "0", "-1", "4194560", "100", "0", "0", "0"]
    after += [str(utime), str(stime), str(cutime), str(cstime)] + ["20"] * 37
    return f"4242 ({comm}) " + " ".join(after)


def test_cpu_seconds_come_from_utime_stime_and_reaped_children_whatever_the_name() -> None:
    assert stat_cpu_s(_stat("celery", 150, 50, 0, 0), clk_tck=100) == 2.0
    assert stat_cpu_s(_stat("a) (b c)", 100, 0, 30, 20), clk_tck=100) == 1.5
    own = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert stat_cpu_s(own) > 0


def test_the_ledger_keeps_the_cpu_of_a_process_that_exited() -> None:
    ledger = CpuLedger()
    assert ledger.update({1: 1.0, 2: 2.0}) == 3.0
    assert ledger.update({1: 1.5, 2: 0.0}) == 3.5  # pid 2 is gone: its 2 s stay
    assert ledger.update({1: 1.5, 3: 0.25}) == 3.75


def test_a_tree_holds_the_children_of_the_processes_started() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        readings = tree_cpu([os.getpid()])
        assert os.getpid() in readings and child.pid in readings
        assert readings[os.getpid()] > 0
    finally:
        child.kill()
        child.wait()


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.95) == pytest.approx(95.05)
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([], 0.5) is None


def _tick(t: float, in_flight: int = 0, **kw: Any) -> Tick:
    values = {"cpu_s": 0.0, "emulator_cpu_s": 0.0, "rss_mb": 0.0, "pg_connections": 0} | kw
    return Tick(t=t, in_flight=in_flight, **values)


def _job(i: int, status: str = "succeeded", **kw: Any) -> JobFacts:
    values = {"created_s": 0.0, "finished_s": None, "first_submit_s": None, "attempt_rows": 1}
    return JobFacts(id=f"j{i}", prompt=f"bench job {i}", status=status, **(values | kw))


def test_the_steady_window_is_the_last_half_of_the_arrivals() -> None:
    ticks = [_tick(float(t)) for t in range(31)]
    assert [t.t for t in steady(ticks, 20)] == [float(t) for t in range(10, 21)]
    finished = [9.9, 10.0, 15.0, 20.0, 20.1, None]
    jobs = [_job(i, finished_s=f) for i, f in enumerate(finished)]
    assert completed_per_s(jobs, 20) == pytest.approx(3 / 10)


def test_submit_wait_is_enqueue_to_the_first_post() -> None:
    jobs = [_job(1, created_s=1.0, first_submit_s=1.5), _job(2, created_s=2.0)]
    assert submit_waits(jobs) == [0.5]


def test_duplicates_are_submits_beyond_the_jobs_own_attempts() -> None:
    jobs = [_job(1), _job(2), _job(3, attempt_rows=3), _job(4, attempt_rows=0)]
    by_prompt = {"bench job 1": 1, "bench job 2": 2, "bench job 3": 3, "bench job 4": 1}
    assert duplicate_submissions(jobs, by_prompt) == 1
    assert duplicate_submissions(jobs, by_prompt | {"bench job 3": 5}) == 3


def test_lost_counts_open_jobs_and_jobs_missing_from_the_table() -> None:
    jobs = [_job(1), _job(2, status="at_fal"), _job(3, status="refused")]
    assert lost(["j1", "j2", "j3", "j4"], jobs) == 2


def test_flower_shows_an_outcome_only_in_a_task_of_the_job_with_that_outcome() -> None:
    statuses = {"a": "succeeded", "b": "refused", "c": "failed", "d": "cancelled"}
    statuses |= {"e": "succeeded", "f": "failed", "g": "succeeded"}
    tasks: dict[str, dict[str, Any]] = {
        "a": {"state": "SUCCESS", "result": "'at_fal since 12:00:00'"},
        "a/collect-1": {"state": "SUCCESS", "result": "'succeeded'"},
        "b/collect-1": {"state": "SUCCESS", "result": "'refused:celebrity_likeness'"},
        "c/submit-2": {"state": "FAILURE", "result": "JobFailed('failed:http_500')"},
        "d": {"state": "REVOKED", "result": None},
        "e": {"state": "SUCCESS", "result": "'at_fal since 12:00:00'"},
        "f/collect-1": {"state": "SUCCESS", "result": "'succeeded'"},
        "ga/collect-1": {"state": "SUCCESS", "result": "'succeeded'"},  # another job's
    }
    assert flower_outcomes_missing(statuses, tasks) == ["e", "f", "g"]


def test_status_requests_are_counted_over_the_requests_fal_completed() -> None:
    requests = {
        "r1": {"state": "COMPLETED", "status_polls": 1},
        "r2": {"state": "COMPLETED", "status_polls": 2},
        "r3": {"state": "IN_PROGRESS", "status_polls": 9},
    }
    assert status_requests_per_job(requests) == 1.5
    assert status_requests_per_job({}) is None


def _args(**kw: Any) -> Namespace:
    return Namespace(
        **({"rate": 2.0, "duration": 10.0, "latency": 2.0, "fal_concurrency": 50} | kw)
    )


def test_the_json_line_has_every_figure_the_issue_asks_for() -> None:
    ticks = [
        _tick(float(t), in_flight=t, rss_mb=100.0 + t, pg_connections=t % 4) for t in range(13)
    ]
    jobs = [
        _job(i, created_s=i / 2, first_submit_s=i / 2 + 0.1, finished_s=i / 2 + 2, attempt_rows=1)
        for i in range(20)
    ]
    outcome = Outcome(
        mode="polling",
        enqueued=[j.id for j in jobs],
        cpu_s=0.1,
        emulator_cpu_s=0.04,
        requests={f"r{i}": {"state": "COMPLETED", "status_polls": 1} for i in range(20)},
        by_prompt={j.prompt: 1 for j in jobs},
        flower_missing=0,
    )
    data = summary(_args(), outcome, ticks, jobs)
    assert list(data)[: len(KEYS)] == list(KEYS)
    json.dumps(data)  # one JSON object
    assert data["completed_per_s"] == pytest.approx(11 / 5)  # ended at 5.0 .. 10.0 s
    assert data["in_flight_p50"] == 7.5  # samples 5 .. 10 s
    assert data["submit_wait_p95_s"] == pytest.approx(0.1)
    assert data["cpu_ms_per_job"] == pytest.approx(5.0)
    assert data["emulator_cpu_ms_per_job"] == pytest.approx(2.0)
    assert data["status_requests_per_job"] == 1.0
    assert data["peak_rss_mb"] == 112.0 and data["pg_connections_peak"] == 3
    assert data["lost"] == 0 and data["duplicate_submissions"] == 0
    assert data["flower_outcomes_missing"] == 0
    naive = summary(_args(), Outcome("naive", [], 0.0, 0.0, {}, {}), [], [])
    assert naive["lost"] is None and naive["duplicate_submissions"] is None


def test_an_open_loop_run_needs_a_duration() -> None:
    with pytest.raises(SystemExit, match="--duration"):
        throughput.main(["--rate", "5", "--latency", "1", "--fal-concurrency", "5"])


def _ours_running() -> list[str]:
    """Command lines of imagegen processes started from this checkout's interpreter."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(argv).decode(errors="replace")
        if sys.executable in line and ("celery" in line or "imagegen" in line):
            found.append(line)
    return found


@pytest.mark.slow
@pytest.mark.usefixtures("restore_structlog")  # bench.throughput.main configures structlog
def test_a_tiny_open_loop_run_in_webhook_mode_loses_nothing_and_leaves_nothing_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--rate", "5", "--duration", "4", "--latency", "1", "--fal-concurrency", "20"]
    argv += ["--webhook", "--pollers", "0", "--flower", "--workers", "1", "--print-every", "60"]
    assert throughput.main(argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(figures)[: len(KEYS)] == list(KEYS)
    assert figures["enqueued"] == figures["terminal"] == 20 and figures["drained"] is True
    assert figures["lost"] == 0 and figures["duplicate_submissions"] == 0
    assert figures["flower_outcomes_missing"] == 0
    assert figures["completed_per_s"] > 0 and figures["in_flight_p50"] > 0
    assert figures["status_requests_per_job"] == 0  # webhook mode, no poller
    assert figures["cpu_ms_per_job"] > 0 and figures["peak_rss_mb"] > 0
    assert figures["pg_connections_peak"] > 0
    assert _ours_running() == []


@pytest.mark.slow
@pytest.mark.usefixtures("restore_structlog")  # bench.throughput.main configures structlog
def test_a_tiny_run_prints_its_figures_and_a_timeline_that_adds_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs, latency_s, cap = 12, 1.0, 6
    argv = ["--jobs", str(jobs), "--latency", str(latency_s), "--fal-concurrency", str(cap)]
    argv += ["--processes", "1", "--threads", "8", "--timeline"]
    argv += ["--print-every", "60"]  # on a Redis database it leases itself
    assert throughput.main(argv) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["finished"] == jobs and figures["statuses"] == {"succeeded": jobs}
    assert 0 < figures["peak_in_progress"] <= cap  # the fleet cap held at the emulator
    assert figures["jobs_per_s"] > 0 and figures["status_requests_per_job"] >= 1
    assert 0 <= figures["heard_p50_s"] <= figures["heard_p95_s"] < latency_s + 5, figures
    assert "naive_jobs_per_s" not in figures and "ratio_vs_naive" not in figures
    assert "second by second" in out

    timeline = figures["timeline"]
    seconds = [row[0] for row in timeline]
    assert seconds == sorted(set(seconds))
    claimed, sent, done, finished = ({row[0]: row[i] for row in timeline} for i in range(1, 5))
    assert sum(claimed.values()) == sum(sent.values()) == sum(finished.values()) == jobs
    assert sum(done.values()) == jobs
    for t, n in done.items():  # done at fal = sent + the emulator's latency, to the second
        assert sent.get(t - int(latency_s), 0) == n
    recorded = 0
    for t in seconds:  # no outcome is recorded before fal finished the request
        recorded += finished.get(t, 0)
        assert recorded <= sum(n for s, n in done.items() if s <= t)
