"""The collect stage (worker/jobs/collect.py), driven as its thin Celery task drives it, after
the poller's ``completed`` move; and the fake fal's own answers. As tests/test_stages.py:
no Celery worker, no emulator, no Redis (``tests.stages_kit``).
"""

from __future__ import annotations

import pytest

from imagegen.models import AttemptOutcome, JobStatus
from imagegen.worker.constants import CALLBACK_TASK, SUBMIT_TASK
from imagegen.worker.db import write
from imagegen.worker.errors import PolicyRefusal, TransientFalError
from imagegen.worker.fal import fake, webhook_store
from imagegen.worker.fal.fake import FakeFal
from imagegen.worker.jobs import collect, submit
from imagegen.worker.jobs.deps import Deps
from tests.stages.kit import (
    MAX_ATTEMPTS,
    RecordingApp,
    add_job,
    attempts_of,
    completed,
    job,
    make_deps,
    to_collecting,
)


def test_a_refusal_at_result_is_recorded_and_never_resubmitted(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    fal.then(fake.refuse_at_result("hate_protected_group"))
    to_collecting(deps, job_id)
    assert collect.run(job_id, deps).summary == "refused:hate_protected_group"
    row = job(deps, job_id)
    assert row["status"] is JobStatus.REFUSED and row["refusal_source"] == "fal"
    assert row["refusal_category"] == "hate_protected_group" and row["refusal_message"]
    assert [a["outcome"] for a in attempts_of(deps, job_id)] == [AttemptOutcome.REFUSED]
    assert len(fal.submits) == 1 and fal.cancels == []


def test_a_result_that_cannot_be_read_is_read_again(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    fal.then(fake.result_unavailable(503))
    to_collecting(deps, job_id)
    outcome = collect.run(job_id, deps)
    assert outcome.summary == "retry" and outcome.retry_in == 0.0
    row = job(deps, job_id)
    assert row["status"] is JobStatus.COLLECTING and row["lease_owner"] is None
    assert row["fal_request_id"] == fal.submits[0].request_id
    assert collect.run(job_id, deps).summary == "succeeded"
    assert len(fal.submits) == 1 and len(fal.results) == 2


def test_a_result_that_never_reads_fails_after_max_attempts_reads(deps: Deps, fal: FakeFal) -> None:
    job_id = add_job(deps)
    fal.then(fake.Step(results=(fake.Reply(503, {"detail": "Service Unavailable"}),)))
    to_collecting(deps, job_id)
    for retries in range(MAX_ATTEMPTS - 1):
        assert collect.run(job_id, deps, retries=retries).summary == "retry"
    outcome = collect.run(job_id, deps, retries=MAX_ATTEMPTS - 1)
    assert outcome.failed and outcome.reason is not None
    assert "fal's answer could not be read: gave up after 3 attempts" in outcome.reason
    assert job(deps, job_id)["status"] is JobStatus.FAILED and len(fal.submits) == 1
    assert len(fal.results) == MAX_ATTEMPTS


def test_a_request_that_failed_at_fal_is_submitted_anew(
    deps: Deps, fal: FakeFal, app: RecordingApp
) -> None:
    job_id = add_job(deps)
    fal.then(fake.failed_at_fal("runner_disconnected"))
    to_collecting(deps, job_id)
    outcome = collect.run(job_id, deps)
    assert outcome.summary.startswith("resubmitting: ")
    row = job(deps, job_id)
    assert row["status"] is JobStatus.QUEUED and row["fal_request_id"] is None
    assert row["submitted_at"] is None and row["poll_at"] is None
    assert app.sent[-1] == (
        SUBMIT_TASK,
        [str(job_id)],
        {"task_id": f"{job_id}/submit-2", "countdown": None},
    )
    assert [a["outcome"] for a in attempts_of(deps, job_id)] == [AttemptOutcome.TRANSIENT]
    to_collecting(deps, job_id)
    assert collect.run(job_id, deps).summary == "succeeded"
    assert len(fal.submits) == 2 and job(deps, job_id)["attempts"] == 2


def test_a_job_with_a_callback_url_publishes_its_callback_when_it_ends(
    deps: Deps, fal: FakeFal, app: RecordingApp
) -> None:
    quiet = add_job(deps, "no callback")
    job_id = add_job(deps, callback_url="https://app.example/hook")
    to_collecting(deps, quiet)
    to_collecting(deps, job_id)
    assert CALLBACK_TASK not in app.names()  # nothing ended yet
    assert collect.run(quiet, deps).summary == "succeeded"
    assert collect.run(job_id, deps).summary == "succeeded"
    assert [s for s in app.sent if s[0] == CALLBACK_TASK] == [(CALLBACK_TASK, [str(job_id)], {})]


def test_the_fake_reports_a_request_failed_at_fal_as_resubmittable(fal: FakeFal) -> None:
    class Hooks:
        sent = 0

        def sending(self) -> None:
            self.sent += 1

        def not_sent(self) -> None:
            self.sent -= 1

    hooks = Hooks()
    fal.then(fake.failed_at_fal("runner_disconnected"), fake.refuse_at_submit("sexual_minors"))
    request_id = fal.submit("m", {"prompt": "p"}, hooks)
    failure = fal.status("m", request_id).failure()
    assert isinstance(failure, TransientFalError) and failure.resubmit
    with pytest.raises(TransientFalError) as raised:
        fal.result("m", request_id)
    assert raised.value.error_type == "runner_disconnected" and raised.value.http_status == 500
    with pytest.raises(PolicyRefusal) as refused:
        fal.submit("m", {"prompt": "p"}, hooks)
    assert refused.value.category == "sexual_minors" and hooks.sent == 2


WEBHOOK = "https://worker.example/fal/webhook"


def test_webhook_mode_reads_fal_s_stored_callback_not_the_result(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, IMAGEGEN_WEBHOOK_URL=WEBHOOK)
    job_id = add_job(deps)
    assert submit.run(job_id, deps).summary.startswith("at_fal:")
    (sent,) = fal.submits
    assert sent.webhook_url == f"{WEBHOOK}?job_id={job_id}" and sent.request_id is not None
    row = job(deps, job_id)
    fallback = (row["poll_at"] - row["submitted_at"]).total_seconds()
    assert fallback == deps.settings.webhook_fallback_s  # the poller only as a fallback
    images = [{"url": f"{fake.FILES_URL}/{sent.request_id}/0.png"}]
    body = {"status": "OK", "request_id": sent.request_id, "payload": {"images": images}}
    request_id = sent.request_id
    write(url, lambda db: webhook_store.record(db, request_id, body, job_id))
    completed(deps, job_id)
    assert collect.run(job_id, deps).summary == "succeeded"
    assert job(deps, job_id)["images"] == images and fal.results == []


def test_webhook_mode_resubmits_a_request_whose_callback_reports_it_failed(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, IMAGEGEN_WEBHOOK_URL=WEBHOOK)
    job_id = add_job(deps)
    to_collecting(deps, job_id)
    request_id = fal.submits[0].request_id
    assert request_id is not None
    body = {
        "status": "ERROR",
        "request_id": request_id,
        "error": "Invalid status code: 500",
        "payload": {"detail": "The runner went away", "error_type": "runner_disconnected"},
    }
    write(url, lambda db: webhook_store.record(db, request_id, body, job_id))
    assert collect.run(job_id, deps).summary.startswith("resubmitting: ")
    assert job(deps, job_id)["status"] is JobStatus.QUEUED and fal.results == []
    assert app.names()[-1] == SUBMIT_TASK


def test_a_refusal_asks_the_cooldown_task_about_its_end_user(
    deps: Deps, fal: FakeFal, app: RecordingApp
) -> None:
    from imagegen.models import DEFAULT_TENANT_ID
    from imagegen.worker.constants import COOLDOWN_TASK

    job_id = add_job(deps, end_user="u-7")
    fal.then(fake.refuse_at_result("violence"))
    to_collecting(deps, job_id)
    assert collect.run(job_id, deps).summary == "refused:violence"
    assert (COOLDOWN_TASK, [str(DEFAULT_TENANT_ID), "u-7"], {}) in app.sent
