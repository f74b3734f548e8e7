"""When the first status poll goes out: learned per model, not floored at the default."""

from __future__ import annotations

import pytest

from worker.polling import LatencyEstimate


def test_default_until_a_generation_was_seen() -> None:
    assert LatencyEstimate().first_wait_s("openai/gpt-image-2", 1.0) == 1.0


def test_polls_near_the_end_of_a_typical_generation() -> None:
    estimate = LatencyEstimate()
    estimate.observe("m", 60.0)
    assert estimate.first_wait_s("m", 1.0) == pytest.approx(51.0)
    assert estimate.first_wait_s("other", 1.0) == 1.0  # per model
    estimate.observe("m", 40.0)  # moves a fifth of the way
    assert estimate.first_wait_s("m", 1.0) == pytest.approx(0.85 * 56.0)


def test_fast_generations_are_polled_sooner_than_the_default() -> None:
    estimate = LatencyEstimate()
    estimate.observe("m", 0.02)
    assert estimate.first_wait_s("m", 1.0) == pytest.approx(0.017)


def test_near_the_typical_end_polls_come_every_five_percent_of_it() -> None:
    estimate = LatencyEstimate()
    assert estimate.near_end_step_s("m", 10.0) is None  # nothing known yet
    estimate.observe("m", 60.0)
    assert estimate.near_end_step_s("m", 52.0) == pytest.approx(3.0)
    assert estimate.near_end_step_s("m", 79.0) is None  # past 1.3x: back to the growing schedule
    estimate.observe("fast", 1.0)
    assert estimate.near_end_step_s("fast", 0.5) == pytest.approx(0.25)  # never below 0.25 s
