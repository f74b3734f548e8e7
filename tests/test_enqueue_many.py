"""enqueue_many: one transaction, Redis pipelines of PUBLISH_BATCH task messages."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from imagegen.models import Job
from imagegen.worker.db import session_scope
from imagegen.worker.errors import EnqueueError
from imagegen.worker.jobs.enqueue import enqueue_many
from tests.conftest import Stack, unique


def _count(stack: Stack) -> int:
    with session_scope(stack.database_url) as session:
        return session.execute(select(func.count()).select_from(Job)).scalar_one()


@pytest.mark.slow
def test_a_batch_is_published_in_order_and_every_job_runs(running: Stack) -> None:
    prompts = [unique(f"batch {i}") for i in range(5)]
    ids = enqueue_many(prompts, settings=running.settings(), app=running.app())
    assert len(set(ids)) == 5
    for job_id, prompt in zip(ids, prompts, strict=True):
        job = running.wait_terminal(job_id)
        assert job["status"] == "succeeded" and job["prompt"] == prompt


def test_a_batch_with_the_broker_down_leaves_no_row_and_says_so(stack: Stack) -> None:
    settings = stack.settings(redis_url="redis://127.0.0.1:1/0")
    app = stack.app()
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    app.conf.broker_connection_retry = False
    app.conf.broker_transport_options = {"max_retries": 0}
    with pytest.raises(EnqueueError, match="broker could not be reached"):
        enqueue_many([unique("lost a"), unique("lost b")], settings=settings, app=app)
    assert _count(stack) == 0


@pytest.mark.slow
def test_the_enqueue_benchmark_prints_its_figures_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import enqueue as bench_enqueue

    argv = ["--jobs", "30", "--batch", "10", "--singles", "5"]  # on a Redis db it leases itself
    assert bench_enqueue.main(argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["jobs"] == 30 and figures["singles"] == 5
    assert figures["enqueue_many_jobs_per_s"] > 0
    assert 0 < figures["single_enqueue_p50_ms"] <= figures["single_enqueue_p99_ms"]


def test_a_big_batch_reaches_workers_while_it_is_still_being_published(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task messages go to Redis PUBLISH_BATCH at a time: while the 150th is being built,
    the first 100 are already on the queue for workers to take."""
    import redis

    from imagegen.worker.constants import JOB_QUEUE
    from imagegen.worker.jobs import enqueue as api

    app = stack.app()
    queue = redis.Redis.from_url(stack.settings().redis_url)
    queue.delete(JOB_QUEUE)
    seen: list[int] = []
    send_task = app.send_task

    def watching(*args: object, **kwargs: object) -> object:
        seen.append(int(queue.llen(JOB_QUEUE)))
        return send_task(*args, **kwargs)

    monkeypatch.setattr(app, "send_task", watching)
    try:
        enqueue_many(
            [unique(f"big batch {i}") for i in range(150)], settings=stack.settings(), app=app
        )
        assert api.PUBLISH_BATCH == 100
        assert seen[99] == 0 and seen[100] == 100 and seen[149] == 100, seen
        assert queue.llen(JOB_QUEUE) == 150
    finally:
        queue.delete(JOB_QUEUE)
        queue.close()


def test_while_jobs_wait_for_a_fal_slot_new_ones_are_written_waiting_without_a_message(
    stack: Stack,
) -> None:
    import redis

    from imagegen.models import JobStatus
    from imagegen.worker.constants import JOB_QUEUE
    from imagegen.worker.fal.limits import FalLimiter

    settings = stack.settings(imagegen_fal_concurrency=2)
    FalLimiter.for_settings(settings).mark_waiting(30)  # a submit found the fleet full
    ids = enqueue_many([unique("late a"), unique("late b")], settings=settings, app=stack.app())
    with session_scope(stack.database_url) as session:
        statuses = session.execute(select(Job.status).where(Job.id.in_(ids))).scalars().all()
    assert set(statuses) == {JobStatus.WAITING}
    with redis.Redis.from_url(stack.redis_url) as client:
        assert client.llen(JOB_QUEUE) == 0  # the granter picks them; no message to queue behind
    FalLimiter.for_settings(settings).clear_waiting()
    third = enqueue_many([unique("on time")], settings=settings, app=stack.app())
    with session_scope(stack.database_url) as session:
        assert session.get(Job, third[0]).status is JobStatus.QUEUED  # type: ignore[union-attr]
