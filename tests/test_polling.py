"""When status polls go out: learned per model from a window of recent generations."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import Stack, unique
from worker.polling import LatencyEstimate


def test_default_until_a_generation_was_seen() -> None:
    assert LatencyEstimate().first_wait_s("openai/gpt-image-2", 1.0) == 1.0


def test_first_poll_at_the_tenth_percentile_of_recent_generations() -> None:
    estimate = LatencyEstimate()
    for seconds in range(50, 60):  # 50 ... 59
        estimate.observe("m", float(seconds))
    assert estimate.first_wait_s("m", 1.0) == pytest.approx(51.0)
    assert estimate.first_wait_s("other", 1.0) == 1.0  # per model


def test_the_window_forgets_old_generations() -> None:
    estimate = LatencyEstimate(window=5)
    for _ in range(5):
        estimate.observe("m", 60.0)
    for _ in range(5):
        estimate.observe("m", 20.0)
    assert estimate.first_wait_s("m", 1.0) == pytest.approx(20.0)


def test_done_at_the_first_poll_counts_as_one_step_shorter_so_the_estimate_can_come_down() -> None:
    estimate = LatencyEstimate()
    estimate.observe("m", 30.0, done_at_first_poll=True)  # nothing known yet: 0.9x
    assert estimate.first_wait_s("m", 1.0) == pytest.approx(27.0)
    estimate = LatencyEstimate(window=3)
    for _ in range(3):
        estimate.observe("m", 30.0)
    assert estimate.near_end_step_s("m", 30.0) == pytest.approx(1.5)  # 5 % of the median
    for _ in range(3):  # fal got faster: each first poll found the request done
        estimate.observe("m", estimate.first_wait_s("m", 1.0), done_at_first_poll=True)
    assert estimate.first_wait_s("m", 1.0) == pytest.approx(30.0 - 3 * 1.5, abs=0.3)


def test_fast_generations_are_polled_sooner_than_the_default() -> None:
    estimate = LatencyEstimate()
    estimate.observe("m", 0.02)
    assert estimate.first_wait_s("m", 1.0) == pytest.approx(0.02)


def test_near_the_typical_end_polls_come_every_five_percent_of_the_median() -> None:
    estimate = LatencyEstimate()
    assert estimate.near_end_step_s("m", 10.0) is None  # nothing known yet
    for seconds in (40.0, 60.0, 100.0):
        estimate.observe("m", seconds)
    assert estimate.near_end_step_s("m", 52.0) == pytest.approx(3.0)
    assert estimate.near_end_step_s("m", 129.0) == pytest.approx(3.0)  # until 1.3x the p90
    assert estimate.near_end_step_s("m", 131.0) is None  # then the growing schedule
    estimate.observe("fast", 1.0)
    assert estimate.near_end_step_s("fast", 0.5) == pytest.approx(0.25)  # never below 0.25 s


def test_a_poll_that_found_it_running_comes_again_when_requests_were_heard_done() -> None:
    """A completion is never heard before it happens: where recent requests were heard done
    at 30.1-30.55 s (10th percentile 30.15), a request still running at 29.2 s is polled
    again at 30.15 s, not a whole step (5 % of the median) later; from then on, every step."""
    estimate = LatencyEstimate(window=10)
    for i in range(10):  # last "not done" at 29.0-29.45 s, heard done at 30.1-30.55 s
        estimate.observe("steady", 29.0 + 0.05 * i, heard_s=30.1 + 0.05 * i)
    step = 0.05 * 29.2  # 5 % of the median of the lower bounds
    assert estimate.near_end_step_s("steady", 29.2) == pytest.approx(30.15 - 29.2)
    assert estimate.near_end_step_s("steady", 30.0) == pytest.approx(0.25)  # at least 0.25 s
    assert estimate.near_end_step_s("steady", 30.2) == pytest.approx(step)  # past it
    estimate.observe("unheard", 29.0)  # no heard times: the step as before
    assert estimate.near_end_step_s("unheard", 28.0) == pytest.approx(0.05 * 29.0)


def test_only_a_few_scouts_poll_while_nothing_is_known() -> None:
    estimate = LatencyEstimate(scouts=2)
    assert estimate.enlist_scout("m") and estimate.enlist_scout("m")
    assert not estimate.enlist_scout("m")
    assert estimate.enlist_scout("other")  # per model
    estimate.discharge_scout("m")
    assert estimate.enlist_scout("m")  # a freed place is taken again
    estimate.observe("m", 30.0)
    assert not estimate.enlist_scout("m")  # known: nobody needs to scout


def test_waiters_wake_as_soon_as_a_scout_learns_the_latency() -> None:
    estimate = LatencyEstimate(scouts=1)
    assert estimate.enlist_scout("m")
    woke: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        estimate.await_news("m", timeout_s=20.0)
        woke.append(time.monotonic() - started)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    estimate.observe("m", 30.0)
    thread.join(timeout=5.0)
    assert woke and woke[0] < 5.0
    assert estimate.known("m")


def test_waiting_for_news_gives_up_after_its_timeout() -> None:
    estimate = LatencyEstimate(scouts=1)
    assert estimate.enlist_scout("m")
    started = time.monotonic()
    estimate.await_news("m", timeout_s=0.2)
    assert 0.15 <= time.monotonic() - started < 5.0
    assert not estimate.known("m")


@pytest.mark.slow
def test_a_fresh_worker_polls_its_first_wave_through_a_few_scouts(running: Stack) -> None:
    """Eight 2 s generations on a new worker: four scouts poll every 0.1 s; the other
    four wait for what they learn, then need a poll or two each (the growing schedule
    alone would spend about eight on every one)."""
    from worker.api import enqueue_many

    prompts = [unique(f"[[fal:ok+latency:2]] first wave {i}") for i in range(8)]
    ids = enqueue_many(prompts, settings=running.settings(), app=running.app())
    jobs = [running.wait_terminal(job_id) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    requests = running.emulator.stats()["requests"]
    polls = sorted(requests[job["fal_request_id"]]["status_polls"] for job in jobs)
    assert sum(1 for n in polls if n <= 3) >= 3, polls
    assert polls[-1] >= 10, polls  # the scouts did poll often
