"""The generation path's stages (worker/jobs), one layer at a time: no Celery worker, no
emulator, no Redis.

Each test gets a migrated SQLite file (copied from one migrated once), fal as
``worker.fal.fake.FakeFal``, the fleet limiter and account guard in this process, and a
Celery app that only records what it is asked to publish. It drives ``submit.run`` and
``collect.run`` as the thin Celery tasks do; the poller's part is one ``completed`` move.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from celery import Celery
from sqlalchemy import insert, select, update

from models import AttemptOutcome, JobAttempt, JobStatus, utcnow
from worker.account import AccountGuard
from worker.api import _row
from worker.constants import CALLBACK_TASK, COLLECT_TASK, SUBMIT_TASK
from worker.db import dispose_engines, upgrade, write
from worker.errors import PolicyRefusal, TransientFalError
from worker.fal import fake
from worker.fal.fake import FakeFal
from worker.fleet import FalLimiter
from worker.jobs import collect, dispatch, state, submit
from worker.jobs.deps import Deps
from worker.moderation import Chain, Verdict, build_chain
from worker.params import validate_request
from worker.retry import RetryPolicy
from worker.settings import Settings

JOBS = state.JOBS
ATTEMPTS = JobAttempt.__table__
MAX_ATTEMPTS = 3


class RecordingApp:
    """Celery as the stages use it: ``send_task`` only, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        self.sent.append((name, list(args or []), options))

    def names(self) -> list[str]:
        return [name for name, _args, _options in self.sent]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stages") / "template.db"
    upgrade(f"sqlite:///{path}")
    dispose_engines()
    return path


@pytest.fixture
def url(migrated: Path, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "jobs.db"
    shutil.copy(migrated, path)
    yield f"sqlite:///{path}"
    dispose_engines()


@pytest.fixture
def fal() -> FakeFal:
    return FakeFal()


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


def make_deps(
    url: str,
    fal: FakeFal,
    app: RecordingApp,
    *,
    limit: int | None = 4,
    moderation: str | None = None,
    **env: Any,
) -> Deps:
    values = {"DATABASE_URL": url, "IMAGEGEN_MAX_ATTEMPTS": MAX_ATTEMPTS, **env}
    settings = Settings.model_validate({k: str(v) for k, v in values.items()})
    return Deps(
        settings=settings,
        gateway=fal,
        limiter=FalLimiter(None, limit=limit, lease_s=60.0),
        guard=AccountGuard(None, 60),
        policy=RetryPolicy(max_attempts=MAX_ATTEMPTS, rand=lambda: 0.0),
        app=cast(Celery, app),
        moderation=build_chain(moderation) if moderation else None,
    )


@pytest.fixture
def deps(url: str, fal: FakeFal, app: RecordingApp) -> Deps:
    return make_deps(url, fal, app)


def add_job(deps: Deps, prompt: str = "a lighthouse at dusk", **overrides: Any) -> uuid.UUID:
    """A queued job, the row ``worker.api.enqueue`` writes (without publishing it)."""
    request = validate_request({"prompt": prompt}, settings=deps.settings)
    row = {**_row(request, deps.settings, utcnow()), **overrides}
    write(deps.settings.database_url, lambda db: db.execute(insert(JOBS), [row]))
    return cast(uuid.UUID, row["id"])


def job(deps: Deps, job_id: uuid.UUID) -> dict[str, Any]:
    query = select(JOBS).where(JOBS.c.id == job_id)
    return dict(write(deps.settings.database_url, lambda db: db.execute(query).one())._mapping)


def attempts_of(deps: Deps, job_id: uuid.UUID) -> list[dict[str, Any]]:
    query = select(ATTEMPTS).where(ATTEMPTS.c.job_id == job_id).order_by(ATTEMPTS.c.number)
    rows = write(deps.settings.database_url, lambda db: db.execute(query).all())
    return [dict(r._mapping) for r in rows]


def completed(deps: Deps, job_id: uuid.UUID) -> None:
    """The poller heard COMPLETED: at_fal -> collecting."""
    moved = write(deps.settings.database_url, lambda db: state.move(db, job_id, "completed"))
    assert moved is not None


def to_collecting(deps: Deps, job_id: uuid.UUID) -> None:
    assert submit.run(job_id, deps).summary.startswith("at_fal:")
    completed(deps, job_id)


# --- the submit and collect stages -----------------------------------------------------


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
    assert dispatch.heard_completed(deps.settings.database_url, deps.app, deps.limiter, job_id)
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


def test_a_full_fleet_requeues_without_submitting(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=1)
    assert deps.limiter.try_acquire("another-job")
    job_id = add_job(deps)
    outcome = submit.run(job_id, deps)
    assert outcome.summary == "retry" and outcome.retry_in is not None
    assert 0.5 <= outcome.retry_in <= 2.0
    row = job(deps, job_id)
    assert row["status"] is JobStatus.QUEUED and row["attempts"] == 0 and fal.submits == []
    assert deps.limiter.in_flight() == 1  # the other job's slot is untouched


class CountingChecker:
    """A moderation checker that passes every prompt and counts the prompts it was asked."""

    name = "counting"

    def __init__(self) -> None:
        self.asked = 0

    def check(self, prompt: str) -> Verdict:
        self.asked += 1
        return Verdict.passed(self.name)


@pytest.mark.xfail(
    strict=True,
    reason="worker/jobs/submit.py _submit runs the pre-filter before the fleet admission: "
    "a job waiting for a slot asks the (billable) checkers again on every requeue (reported)",
)
def test_a_job_waiting_for_a_slot_is_moderated_once(
    url: str, fal: FakeFal, app: RecordingApp
) -> None:
    deps = make_deps(url, fal, app, limit=1)
    checker = CountingChecker()
    deps.moderation = Chain([checker])
    assert deps.limiter.try_acquire("another-job")
    job_id = add_job(deps)
    for _ in range(3):
        assert submit.run(job_id, deps).summary == "retry"
    deps.limiter.release("another-job")
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


@pytest.mark.xfail(
    strict=True,
    reason="worker/jobs/submit.py _at_fal: a cancel during the POST leaves its attempt "
    "'submitted' and never closed (reported to the lead)",
)
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


# --- the move table (worker.jobs.state) ------------------------------------------------

OWNER = "owner-a"


def row_in(deps: Deps, status: JobStatus, *, owner: str | None, live: bool = True) -> uuid.UUID:
    now = utcnow()
    lease = now + timedelta(seconds=60 if live else -60)
    return add_job(
        deps,
        status=status,
        lease_owner=owner,
        lease_until=lease,
        fal_request_id=None if status is JobStatus.QUEUED else "req-1",
    )


@pytest.mark.parametrize("name", sorted(state.MOVES))
def test_every_move_in_the_table_does_what_it_says(deps: Deps, name: str) -> None:
    move = state.MOVES[name]
    holder = OWNER if move.guard is state.Guard.OWNER else None
    job_id = row_in(deps, move.sources[-1], owner=holder)
    lease_s = 30.0 if move.leases else None
    moved = write(
        deps.settings.database_url,
        lambda db: state.move(db, job_id, name, owner=OWNER, lease_s=lease_s),
    )
    assert moved is not None and moved.job.status is move.target
    row = job(deps, job_id)
    assert row["status"] is move.target
    assert row["lease_owner"] == (OWNER if move.leases else None)
    assert (row["finished_at"] is not None) == (
        move.target
        in (JobStatus.SUCCEEDED, JobStatus.REFUSED, JobStatus.FAILED, JobStatus.CANCELLED)
    )
    assert state.allowed(move.sources[-1], move.target)


def test_an_illegal_move_returns_none_and_changes_nothing(deps: Deps) -> None:
    job_id = add_job(deps)
    before = job(deps, job_id)
    succeed = lambda db: state.move(db, job_id, "succeed", owner=OWNER)  # noqa: E731
    assert write(deps.settings.database_url, succeed) is None
    assert job(deps, job_id) == before
    assert not state.allowed(JobStatus.QUEUED, JobStatus.SUCCEEDED)


def test_the_owner_guard_rejects_another_owner(deps: Deps) -> None:
    job_id = row_in(deps, JobStatus.SUBMITTING, owner=OWNER)
    before = job(deps, job_id)
    theirs = lambda db: state.move(db, job_id, "submitted", owner="owner-b")  # noqa: E731
    assert write(deps.settings.database_url, theirs) is None
    assert job(deps, job_id) == before
    ours = lambda db: state.move(db, job_id, "submitted", owner=OWNER)  # noqa: E731
    assert write(deps.settings.database_url, ours) is not None


def test_the_free_guard_waits_for_a_live_lease_to_run_out(deps: Deps) -> None:
    held = row_in(deps, JobStatus.SUBMITTING, owner=OWNER)
    lapsed = row_in(deps, JobStatus.SUBMITTING, owner=OWNER, live=False)

    def claim(job_id: uuid.UUID) -> state.Moved | None:
        return write(
            deps.settings.database_url,
            lambda db: state.move(db, job_id, "claim", owner="owner-b", lease_s=30.0),
        )

    assert claim(held) is None and job(deps, held)["lease_owner"] == OWNER
    assert claim(lapsed) is not None and job(deps, lapsed)["lease_owner"] == "owner-b"


def test_move_refuses_a_status_value_and_a_missing_owner(deps: Deps) -> None:
    job_id = add_job(deps)
    with pytest.raises(ValueError, match="through a move"):
        write(
            deps.settings.database_url,
            lambda db: state.move(db, job_id, "cancel", values={"status": "failed"}),
        )
    with pytest.raises(ValueError, match="lease owner"):
        write(deps.settings.database_url, lambda db: state.move(db, job_id, "claim"))
