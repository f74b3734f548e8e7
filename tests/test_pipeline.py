"""The whole pipeline: real Postgres, Redis, Celery worker and fal-client against the emulator."""

from __future__ import annotations

import os

import pytest

from tests.conftest import Stack, unique

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]  # every test here runs real processes


@pytest.fixture
def running(shared_running: Stack) -> Stack:
    """One worker and poller for this module: every test here waits for its own jobs only."""
    return shared_running


def test_success_records_images_and_one_submission(running: Stack) -> None:
    prompt = unique("a lighthouse at dawn")
    job_id = running.enqueue(prompt, size="1024x1536", num_images=2)
    job = running.wait_terminal(job_id)
    assert job["status"] == "succeeded", job
    assert len(job["images"]) == 2
    assert job["images"][0]["url"].startswith("https://")
    assert job["attempts"] == 1
    assert job["fal_request_id"] == job["attempt_log"][0]["fal_request_id"]
    assert job["attempt_log"][0]["outcome"] == "succeeded"
    assert running.emulator.stats()["submissions_by_prompt"][prompt] == 1
    assert job["started_at"] and job["finished_at"]
    logs = running.logs()
    assert "job.succeeded" in logs
    assert os.environ["FAL_KEY"] not in logs, "FAL_KEY leaked into the worker's log"
    assert prompt not in logs, "prompts are user data: only their hash is logged"


@pytest.mark.parametrize(
    ("step", "category"),
    [
        ("refuse:celebrity_likeness", "celebrity_likeness"),
        ("refuse:sexual_minors", "sexual_minors"),
        ("refuse:trademark_ip", "trademark_ip"),
        ("refuse422:violence_named_individual", "violence_named_individual"),
        ("late-refuse:self_harm_instructions", "self_harm_instructions"),
        ("status-refuse:hate_protected_group", "hate_protected_group"),
        ("header-refuse:celebrity_likeness", "unspecified"),
        ("refuse:some_new_category", "some_new_category"),
    ],
)
def test_refusal_in_every_shape_is_recorded_once_and_never_retried(
    running: Stack, step: str, category: str
) -> None:
    prompt = unique(f"[[fal:{step}]] a prompt fal refuses")
    job = running.wait_terminal(running.enqueue(prompt))
    assert job["status"] == "refused", job
    assert job["refusal_category"] == category
    assert job["refusal_message"]
    assert job["attempts"] == 1
    assert [a["outcome"] for a in job["attempt_log"]] == ["refused"]
    assert running.emulator.stats()["submissions_by_prompt"][prompt] == 1
    assert "Traceback" not in running.logs()


def test_late_refusal_stores_fals_first_detail_entry(running: Stack) -> None:
    prompt = unique("[[fal:late-refuse:celebrity_likeness]] a famous actor")
    job = running.wait_terminal(running.enqueue(prompt))
    detail = job["attempt_log"][0]["detail"]["fal"]
    assert detail["type"] == "content_policy_violation"
    assert detail["loc"] == ["body", "prompt"]
    assert job["refusal_message"] == detail["msg"]
    assert job["attempt_log"][0]["http_status"] == 422


def test_429_then_success_honours_retry_after(running: Stack) -> None:
    prompt = unique("[[fal:429:2,ok]] a quiet harbour")
    job = running.wait_terminal(running.enqueue(prompt))
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    first, second = job["attempt_log"]
    assert (first["outcome"], first["http_status"]) == ("transient", 429)
    gap = _seconds(second["started_at"]) - _seconds(first["finished_at"])
    assert gap >= 1.9, f"Retry-After: 2 was not honoured (gap {gap:.2f}s)"
    assert running.emulator.stats()["submissions_by_prompt"][prompt] == 2


@pytest.mark.parametrize("step", ["503json", "500", "502", "504user", "html"])
def test_5xx_until_the_cap_fails_with_attempts_equal_to_the_cap(running: Stack, step: str) -> None:
    prompt = unique(f"[[fal:{step}]] always failing")
    job = running.wait_terminal(running.enqueue(prompt), timeout_s=60)
    assert job["status"] == "failed", job
    assert job["attempts"] == 3  # IMAGEGEN_MAX_ATTEMPTS in the test env
    assert running.emulator.stats()["submissions_by_prompt"][prompt] == 3
    assert "gave up after 3 attempts" in job["error"]
    assert "Traceback" not in job["error"]


@pytest.mark.parametrize("scenario", ["slow:4", "drop"])
def test_a_submit_sent_without_an_answer_is_never_silently_reposted(
    running: Stack, scenario: str
) -> None:
    """The POST left and no answer came (a timeout: the submit timeout is 2 s in tests; a
    dropped connection): fal may have the request, so by default the job fails saying so,
    with the one POST counted (the same rule as a worker killed mid-submit)."""
    prompt = unique(f"[[fal:{scenario},ok]] an answer that never came")
    job = running.wait_terminal(running.enqueue(prompt), timeout_s=60)
    assert job["status"] == "failed", job
    assert "to avoid paying twice" in job["error"]
    assert [a["outcome"] for a in job["attempt_log"]] == ["unknown"]
    assert job["attempts"] == running.emulator.stats()["submissions_by_prompt"][prompt] == 1


@pytest.mark.parametrize("scenario", ["slow:4", "drop"])
def test_resubmit_unknown_sends_again_and_counts_both(stack: Stack, scenario: str) -> None:
    stack.start_worker(extra_env={"IMAGEGEN_RESUBMIT_UNKNOWN": "true"})
    prompt = unique(f"[[fal:{scenario},ok]] an answer that never came")
    job = stack.wait_terminal(stack.enqueue(prompt), timeout_s=60)
    assert job["status"] == "succeeded", job
    assert [a["outcome"] for a in job["attempt_log"]] == ["unknown", "succeeded"]
    assert job["attempts"] == stack.emulator.stats()["submissions_by_prompt"][prompt] == 2


@pytest.mark.parametrize(
    ("step", "words"),
    [
        ("malformed", "malformed"),
        ("no-images", "no images"),
        ("result-malformed", "malformed"),
        ("status-unknown", "EXPLODED"),
        ("invalid", "less than or equal"),
        ("401", "FAL_KEY"),
    ],
)
def test_bad_answers_fail_with_a_clear_error(running: Stack, step: str, words: str) -> None:
    prompt = unique(f"[[fal:{step}]] a bad answer")
    job = running.wait_terminal(running.enqueue(prompt))
    assert job["status"] == "failed", job
    assert words in job["error"]
    assert job["attempts"] == 1
    assert "Traceback" not in job["error"]


def test_runner_disconnected_resubmits(running: Stack) -> None:
    prompt = unique("[[fal:runner-disconnected,ok]] a flaky runner")
    job = running.wait_terminal(running.enqueue(prompt))
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["attempt_log"][0]["error_type"] == "runner_disconnected"


def test_account_lock_stops_submitting(stack: Stack) -> None:
    stack.start_worker()  # its own: the lock would stop the shared worker's submits too
    running = stack
    locked = unique("[[fal:403lock]] first")
    job = running.wait_terminal(running.enqueue(locked))
    assert job["status"] == "failed" and "locked" in job["error"], job
    later = unique("an innocent prompt")
    job2 = running.wait_terminal(running.enqueue(later))
    assert job2["status"] == "failed" and "locked" in job2["error"], job2
    assert job2["attempts"] == 0
    assert later not in running.emulator.stats()["submissions_by_prompt"]
    assert running.logs().count("fal.account_locked") == 1


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
