"""The generation path's stages (worker/jobs/submit.py, collect.py), driven as the thin
Celery tasks drive them: no Celery worker, no emulator, no Redis.

Each test gets a migrated SQLite file, fal as ``worker.fal.fake.FakeFal``, the fleet
limiter and account guard in this process, and a Celery app that only records what it is
asked to publish (``tests.stages_kit``); the poller's part is one ``completed`` move.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from imagegen.models import AttemptOutcome, JobStatus, utcnow
from imagegen.worker.constants import COLLECT_TASK
from imagegen.worker.db import write
from imagegen.worker.fal import fake
from imagegen.worker.fal.fake import FakeFal
from imagegen.worker.jobs import collect, dispatch, fairshare, state, submit
from imagegen.worker.jobs.deps import Deps
from imagegen.worker.moderation import Chain, Verdict
from tests.stages.kit import (
    JOBS,
    MAX_ATTEMPTS,
    RecordingApp,
    add_job,
    attempts_of,
    job,
    make_deps,
)


def test_success_runs_queued_submitting_at_fal_collecting_succeeded(
    deps: Deps, fal: FakeFal, app: RecordingApp
) -> None:
    job_id = add_job(deps)
    fal.then(fake.succeed(images=2))
    seen: list[JobStatus | None] = []
    fal.while_sending = lambda _args: seen.append(
        state.status_of(deps.settings.database_url, job_id)
    )
    assert job(deps, job_id)["status"] is JobStatus.QUEUED
    outcome = submit.run(job_id, deps)
    row = job(deps, job_id)
    request_id = row["fal_request_id"]
    assert seen == [JobStatus.SUBMITTING]
    assert re.fullmatch(
        rf"at_fal:{request_id} since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", outcome.summary
    )
    assert row["status"] is JobStatus.AT_FAL and row["attempts"] == 1 and row["poll_at"] is not None
    assert [(a["outcome"], a["fal_request_id"]) for a in attempts_of(deps, job_id)] == [
        (AttemptOutcome.SUBMITTED, request_id)
    ]
    assert deps.limiter.in_flight() == 1  # held while fal works on it
    # what the poller calls: the slot goes back and the collect is published
    assert dispatch.heard_completed(deps.settings, deps.app, deps.limiter, job_id)
    assert job(deps, job_id)["status"] is JobStatus.COLLECTING and deps.limiter.in_flight() == 0
    assert app.sent[-1] == (COLLECT_TASK, [str(job_id)], {"task_id": f"{job_id}/collect-1"})
    assert collect.run(job_id, deps).summary == "succeeded"
    row = job(deps, job_id)
    assert row["status"] is JobStatus.SUCCEEDED and row["finished_at"] is not None
    assert len(row["images"]) == 2 and len(fal.checked) == 2
    assert [a["outcome"] for a in attempts_of(deps, job_id)] == [AttemptOutcome.SUCCEEDED]
    assert fal.submits_of("a lighthouse at dusk") == 1 and fal.cancels == []


def test_a_refusal_at_submit_is_recorded_and_never_retried(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps, "a famous singer")
    fal.script("a famous singer", fake.refuse_at_submit("celebrity_likeness"))
    outcome = submit.run(job_id, deps)
    assert outcome.summary == "refused:celebrity_likeness" and outcome.retry_in is None
    row = job(deps, job_id)
    assert row["status"] is JobStatus.REFUSED and row["refusal_source"] == "fal"
    assert (
        row["refusal_category"] == "celebrity_likeness"
        and "content policy" in row["refusal_message"]
    )
    (attempt,) = attempts_of(deps, job_id)
    assert attempt["outcome"] is AttemptOutcome.REFUSED and attempt["http_status"] == 400
    assert submit.run(job_id, deps).summary == "skipped"  # a redelivered task changes nothing
    assert fal.submits_of("a famous singer") == 1 and deps.limiter.in_flight() == 0


def test_the_prefilter_refuses_before_anything_is_submitted(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, moderation="rules")
    job_id = add_job(deps, "pikachu eating a sandwich")
    assert submit.run(job_id, deps).summary == "refused:trademark_ip"
    row = job(deps, job_id)
    assert row["status"] is JobStatus.REFUSED and row["refusal_source"] == "prefilter"
    assert row["refusal_category"] == "trademark_ip" and row["attempts"] == 0
    assert fal.submits == [] and attempts_of(deps, job_id) == []
    fine = add_job(deps, "a windmill in a field")
    assert submit.run(fine, deps).summary.startswith("at_fal:")


def test_a_transient_503_requeues_until_max_attempts_then_fails(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    fal.script("a lighthouse at dusk", fake.unavailable(503))
    for n in range(1, MAX_ATTEMPTS):
        outcome = submit.run(job_id, deps, retries=n - 1)
        assert outcome.summary == "retry" and outcome.retry_in == 0.0
        row = job(deps, job_id)
        assert row["status"] is JobStatus.QUEUED and row["attempts"] == n
        assert row["lease_owner"] is None and row["fal_request_id"] is None
    outcome = submit.run(job_id, deps, retries=MAX_ATTEMPTS - 1)
    assert outcome.failed and outcome.reason is not None
    assert "HTTP 503" in outcome.reason and "gave up after 3 attempts" in outcome.reason
    row = job(deps, job_id)
    assert row["status"] is JobStatus.FAILED and row["error"] == outcome.reason
    outcomes = [(a["outcome"], a["http_status"]) for a in attempts_of(deps, job_id)]
    assert outcomes == [(AttemptOutcome.TRANSIENT, 503)] * MAX_ATTEMPTS
    assert len(fal.submits) == MAX_ATTEMPTS and deps.limiter.in_flight() == 0


def test_a_429_cools_the_fleet_down_and_the_next_run_waits(deps: Deps, fal: FakeFal) -> None:
    first, second = add_job(deps, "one"), add_job(deps, "two")
    fal.then(fake.rate_limited(retry_after_s=30))
    outcome = submit.run(first, deps)
    assert outcome.summary == "retry" and outcome.retry_in == 30.0
    assert 25 < deps.limiter.cooldown_remaining_s() <= 30
    waited = submit.run(second, deps)  # no worker submits during the cool-down
    assert waited.summary == "retry" and waited.retry_in is not None and waited.retry_in > 25
    assert job(deps, second)["status"] is JobStatus.QUEUED and job(deps, second)["attempts"] == 0
    assert len(fal.submits) == 1


def test_a_submit_that_never_connected_is_not_counted(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    fal.then(fake.not_connected())
    assert submit.run(job_id, deps).summary == "retry"
    row = job(deps, job_id)
    assert row["status"] is JobStatus.QUEUED and row["attempts"] == 0
    assert attempts_of(deps, job_id) == []


def test_a_submit_sent_without_answer_fails_saying_so(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    fal.then(fake.no_answer())
    outcome = submit.run(job_id, deps)
    assert outcome.failed and outcome.reason == submit.UNKNOWN_MESSAGE
    row = job(deps, job_id)
    assert row["status"] is JobStatus.FAILED and row["error"] == submit.UNKNOWN_MESSAGE
    (attempt,) = attempts_of(deps, job_id)
    assert attempt["outcome"] is AttemptOutcome.UNKNOWN
    assert attempt["error_type"] == "submit_outcome_unknown"
    assert len(fal.submits) == 1


def test_resubmit_unknown_sends_it_again(url: str, fal: FakeFal, app: RecordingApp) -> None:
    deps = make_deps(url, fal, app, IMAGEGEN_RESUBMIT_UNKNOWN="true")
    job_id = add_job(deps)
    fal.then(fake.no_answer())
    outcome = submit.run(job_id, deps)
    assert outcome.summary == "retry" and outcome.retry_in == 0.0
    assert job(deps, job_id)["status"] is JobStatus.QUEUED
    assert submit.run(job_id, deps).summary.startswith("at_fal:")
    outcomes = [a["outcome"] for a in attempts_of(deps, job_id)]
    assert outcomes == [AttemptOutcome.UNKNOWN, AttemptOutcome.SUBMITTED]
    assert len(fal.submits) == 2 and job(deps, job_id)["attempts"] == 2


class WorkerDied(BaseException):
    """The worker process went away mid-POST (nothing below catches a BaseException)."""


@pytest.mark.parametrize("resubmit", [False, True])
def test_a_submit_whose_worker_died_is_taken_over_after_its_lease(
    url: str, fal: FakeFal, app: RecordingApp, resubmit: bool
) -> None:
    deps = make_deps(url, fal, app, IMAGEGEN_RESUBMIT_UNKNOWN=str(resubmit).lower())
    job_id = add_job(deps)

    def die(_arguments: dict[str, Any]) -> None:
        raise WorkerDied

    fal.while_sending = die
    with pytest.raises(WorkerDied):
        submit.run(job_id, deps)
    fal.while_sending = None
    row = job(deps, job_id)
    assert row["status"] is JobStatus.SUBMITTING and row["lease_owner"] is not None
    assert [a["outcome"] for a in attempts_of(deps, job_id)] == [AttemptOutcome.SENDING]
    assert submit.run(job_id, deps).summary == "skipped"  # its lease still runs
    past = utcnow() - timedelta(seconds=1)
    expire = update(JOBS).where(JOBS.c.id == job_id).values(lease_until=past)
    write(url, lambda db: db.execute(expire))
    outcome = submit.run(job_id, deps)
    assert attempts_of(deps, job_id)[0]["outcome"] is AttemptOutcome.UNKNOWN
    if resubmit:
        assert outcome.summary == "retry" and job(deps, job_id)["status"] is JobStatus.QUEUED
    else:
        assert outcome.failed and outcome.reason == submit.UNKNOWN_MESSAGE
        assert job(deps, job_id)["status"] is JobStatus.FAILED
    assert len(fal.submits) == 1


class CountingChecker:
    """A moderation checker that passes every prompt and counts the prompts it was asked."""

    name = "counting"

    def __init__(self) -> None:
        self.asked = 0

    def check(self, prompt: str) -> Verdict:
        self.asked += 1
        return Verdict.passed(self.name)


def test_a_job_waiting_for_a_slot_is_moderated_once(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=1)
    checker = CountingChecker()
    deps.moderation = Chain([checker])
    assert deps.limiter.try_acquire("another-job")
    job_id = add_job(deps)
    assert submit.run(job_id, deps).summary == "waiting"
    assert submit.run(job_id, deps).summary == "skipped"  # a second message while it waits
    deps.limiter.release("another-job")
    assert fairshare.grant(deps.settings, deps.app, deps.limiter) == 1
    assert submit.run(job_id, deps).summary.startswith("at_fal:")
    assert checker.asked == 1


def test_a_cancel_while_the_post_is_out_cancels_at_fal(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    cancel = lambda db: state.move(db, job_id, "cancel")  # noqa: E731
    fal.while_sending = lambda _args: write(deps.settings.database_url, cancel)
    assert submit.run(job_id, deps).summary == "cancelled"
    assert job(deps, job_id)["status"] is JobStatus.CANCELLED
    assert fal.cancels == [fal.submits[0].request_id] and fal.cancels[0] is not None
    assert deps.limiter.in_flight() == 0


def test_a_cancel_while_the_post_is_out_closes_its_attempt(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    cancel = lambda db: state.move(db, job_id, "cancel")  # noqa: E731
    fal.while_sending = lambda _args: write(deps.settings.database_url, cancel)
    assert submit.run(job_id, deps).summary == "cancelled"
    (attempt,) = attempts_of(deps, job_id)
    assert attempt["fal_request_id"] == fal.submits[0].request_id
    assert attempt["outcome"] is AttemptOutcome.CANCELLED and attempt["finished_at"] is not None


def test_a_locked_account_stops_every_submit(deps: Deps, fal: FakeFal) -> None:
    first, second = add_job(deps, "one"), add_job(deps, "two")
    fal.then(fake.account_locked())
    outcome = submit.run(first, deps)
    assert outcome.failed and outcome.reason is not None and "locked" in outcome.reason
    assert deps.guard.reason() is not None
    outcome = submit.run(second, deps)
    assert outcome.failed and outcome.reason is not None
    assert outcome.reason.startswith("not submitted: fal locked the account")
    assert len(fal.submits) == 1 and job(deps, second)["attempts"] == 0


def test_a_job_past_its_deadline_fails_before_submit(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps, deadline_at=utcnow() - timedelta(seconds=1))
    outcome = submit.run(job_id, deps)
    assert outcome.failed and outcome.reason == "the job's deadline passed before it was submitted"
    assert job(deps, job_id)["status"] is JobStatus.FAILED and fal.submits == []


def test_a_permanent_submit_error_fails_at_once(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    fal.then(fake.rejected(422))
    outcome = submit.run(job_id, deps)
    assert outcome.failed and outcome.reason is not None and "HTTP 422" in outcome.reason
    assert job(deps, job_id)["status"] is JobStatus.FAILED and len(fal.submits) == 1
    assert [a["outcome"] for a in attempts_of(deps, job_id)] == [AttemptOutcome.PERMANENT]


def test_a_submit_whose_task_died_is_taken_over_after_the_sweeper_republishes_it(
    deps: Deps, fal: FakeFal
) -> None:
    """The republish pushes the grace forward (no second publish meanwhile) and frees the
    dead task's lease: the submit it publishes claims the job instead of skipping it."""
    from imagegen.worker.jobs.sweeper import republish

    job_id = add_job(deps)
    past = utcnow() - timedelta(seconds=1)
    values = {"lease_until": past}
    write(
        deps.settings.database_url,
        lambda db: state.move(db, job_id, "claim", owner="dead", lease_s=60, values=values),
    )
    assert republish(deps.settings, deps.app, utcnow()) == [job_id]
    assert submit.run(job_id, deps).summary.startswith("at_fal:")
    assert len(fal.submits) == 1
