"""The chaos bench's pure parts: its arguments and the mass kill's figures (no services)."""

from __future__ import annotations

from bench.chaos import parse_args
from bench.chaos_checks import Facts, duplicate_submissions, mass_figures


def fact(status: str, rows: int = 1, submissions: int = 1, sending: int = 0) -> Facts:
    return Facts("id", "p", status, rows, rows, int(status == "succeeded"), sending,
                 submissions, "succeeded", 1.0, "")  # fmt: skip


def test_duplicates_count_submits_beyond_attempt_rows() -> None:
    facts = [fact("succeeded"), fact("succeeded", rows=2, submissions=2)]
    assert duplicate_submissions(facts) == 0
    facts += [fact("succeeded", rows=1, submissions=3), fact("failed", rows=0, submissions=2)]
    assert duplicate_submissions(facts) == 3


def test_a_job_never_submitted_is_no_duplicate() -> None:
    assert duplicate_submissions([fact("failed", rows=1, submissions=0, sending=1)]) == 0


def test_mass_figures_within_target_needs_nothing_lost_and_the_drain_in_time() -> None:
    done = [fact("succeeded"), fact("failed", sending=1)]
    ok = mass_figures(done, 2, 179.94, 60.0)
    assert ok["within_target"] and ok["lost"] == 0 and ok["drain_after_restart_s"] == 179.9
    assert ok["submits_cut_by_kill"] == 1 and ok["outcomes"] == {"failed": 1, "succeeded": 1}
    assert not mass_figures(done, 2, 180.1, 60.0)["within_target"]
    assert mass_figures(done, 3, 10.0, 60.0)["lost"] == 1  # enqueued, missing from the table
    open_job = mass_figures([*done, fact("queued")], 3, 10.0, 60.0)
    assert open_job["lost"] == 1 and not open_job["within_target"]
    assert not mass_figures(done, 2, None, 60.0)["within_target"]


def test_mass_figures_keys_lead_the_json_line() -> None:
    keys = list(mass_figures([fact("succeeded")], 1, 1.0, 60.0))
    assert keys[:5] == [
        "lost", "duplicate_submissions", "drain_after_restart_s", "latency_s", "within_target"
    ]  # fmt: skip


def test_defaults_per_mode() -> None:
    old = parse_args([])
    assert (old.workers, old.latency, old.mass_kill, old.jobs) == (3, 1.0, False, 300)
    mass = parse_args(["--mass-kill", "--in-flight", "2000"])
    assert (mass.workers, mass.latency, mass.threads, mass.queued) == (2, 60.0, 32, 500)
    assert parse_args(["--mass-kill", "--latency", "5", "--queued", "0"]).queued == 0
