"""bench.throughput end to end on a tiny run: its JSON line, and the --timeline it prints."""

from __future__ import annotations

import json

import pytest

from bench import throughput


@pytest.mark.slow
@pytest.mark.usefixtures("restore_structlog")  # bench.throughput.main configures structlog
def test_a_tiny_run_prints_its_figures_and_a_timeline_that_adds_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs, latency_s, cap = 12, 1.0, 6
    argv = ["--jobs", str(jobs), "--latency", str(latency_s), "--fal-concurrency", str(cap)]
    argv += ["--processes", "1", "--threads", "8", "--skip-naive", "--timeline"]
    argv += ["--print-every", "60"]  # on a Redis database it leases itself
    assert throughput.main(argv) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["finished"] == jobs and figures["statuses"] == {"succeeded": jobs}
    assert 0 < figures["peak_in_progress"] <= cap  # the fleet cap held at the emulator
    assert figures["jobs_per_s"] > 0 and figures["status_requests_per_job"] >= 1
    assert 0 <= figures["heard_p50_s"] <= figures["heard_p95_s"] < latency_s + 5, figures
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
