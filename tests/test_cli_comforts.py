"""The CLI comforts as a user runs them: --version, config, enqueue --wait, enqueue-bulk,
retry. Real processes against real Postgres, Redis, a Celery worker and the fal emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, unique
from tests.test_cli import imagegen as run_imagegen

#: real API or CLI processes against Postgres and Redis: left out of the quick run
pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


def imagegen(stack: Stack | None, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return run_imagegen(stack, *args, timeout=60, **options)


@pytest.fixture
def running(shared_running: Stack) -> Stack:
    """One worker for the module (its tests wait for their own jobs), with a small database
    pool (Postgres' 100 connections are shared)."""
    return shared_running


SMALL_POOL = {"IMAGEGEN_DB_POOL_SIZE": "3"}
SHARED_WORKER_ENV = SMALL_POOL


def _job(stack: Stack, job_id: str) -> dict[str, object]:
    done = imagegen(stack, "job", job_id, "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(done.stdout)
    return data


def _count_jobs(stack: Stack) -> int:
    from sqlalchemy import func, select

    from imagegen.models import Job
    from imagegen.worker.db import session_scope

    with session_scope(stack.database_url) as session:
        return session.execute(select(func.count()).select_from(Job)).scalar_one()


def test_version() -> None:
    done = imagegen(None, "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"imagegen {version('imagegen')}"


def test_config_shows_sources_masks_secrets_and_env_beats_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "IMAGEGEN_MAX_ATTEMPTS=7\nIMAGEGEN_LEASE_S=99\nOPENAI_API_KEY=sk-from-dotenv-123\n"
    )
    env = {
        "IMAGEGEN_LEASE_S": "55",
        "FAL_KEY": "fal-secret-456",
        "DATABASE_URL": "postgresql://me:pw-secret-789@127.0.0.1:5432/x",
    }
    as_json = imagegen(None, "config", "--json", env=env, cwd=tmp_path)
    human = imagegen(None, "config", env=env, cwd=tmp_path)
    assert as_json.returncode == human.returncode == 0, as_json.stderr
    for secret in ("sk-from-dotenv-123", "fal-secret-456", "pw-secret-789"):
        assert secret not in as_json.stdout + human.stdout
    shown = json.loads(as_json.stdout)
    assert shown["IMAGEGEN_MAX_ATTEMPTS"] == {"value": 7, "source": ".env"}
    assert shown["IMAGEGEN_LEASE_S"] == {"value": 55.0, "source": "env"}
    assert shown["OPENAI_API_KEY"] == {"value": "********", "source": ".env"}
    assert shown["FAL_KEY"] == {"value": "********", "source": "env"}
    assert shown["DATABASE_URL"]["value"] == ("postgresql+psycopg://me:********@127.0.0.1:5432/x")
    assert shown["IMAGEGEN_API_KEY"] == {"value": None, "source": "default"}
    assert "IMAGEGEN_MAX_ATTEMPTS=7\t(.env)" in human.stdout.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("prompt", "args", "code", "words"),
    [
        ("a calm lake", [], 0, "succeeded: https://"),
        ("[[fal:refuse:violence_named_individual]] x", [], 10, "refused (violence_named"),
        ("[[fal:401]] a key problem", [], 11, "failed: "),
        ("[[fal:slow:30]] a slow one", ["--wait-timeout", "1"], 13, "still submitting"),
    ],
)
def test_enqueue_wait_follows_the_job_and_exits_by_outcome(
    running: Stack, prompt: str, args: list[str], code: int, words: str
) -> None:
    done = imagegen(running, "enqueue", unique(prompt), "--wait", *args)
    assert done.returncode == code, done.stderr
    job_id = done.stdout.strip()
    uuid.UUID(job_id)  # stdout: the job id alone, as without --wait
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(words), done.stderr
    if code == 13:  # the one case sure to be seen in progress (a refusal may end at once)
        assert "queued" in done.stderr or "submitting" in done.stderr


@pytest.mark.slow
def test_enqueue_wait_exits_12_when_the_job_is_cancelled(running: Stack) -> None:
    env = {**os.environ, **running.env}
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imagegen.worker.cli",
            "enqueue",
            unique("[[fal:slow:30]] x"),
            "--wait",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert waiting.stdout is not None
    job_id = waiting.stdout.readline().strip()
    assert imagegen(running, "cancel", job_id).returncode == 0
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 12, err
    assert err.strip().splitlines()[-1] == "cancelled"


def _jsonl(*rows: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


@pytest.mark.slow
def test_enqueue_bulk_queues_every_line_in_order(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        _jsonl(
            {"prompt": "one"},
            "",
            {"prompt": "two", "image_size": {"width": 1024, "height": 1536}, "quality": "low"},
            {"prompt": "three", "idempotency_key": "bulk-3", "deadline_s": 600},
        )
    )
    done = imagegen(stack, "enqueue-bulk", str(path))
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 3
    jobs = [_job(stack, job_id) for job_id in ids]
    assert [j["prompt"] for j in jobs] == ["one", "two", "three"]
    assert jobs[1]["params"] == {
        "image_size": {"width": 1024, "height": 1536},
        "quality": "low",
        "num_images": 1,
        "output_format": "png",
    }
    assert jobs[2]["idempotency_key"] == "bulk-3"
    again = imagegen(stack, "enqueue-bulk", "-", stdin=path.read_text())
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[2] == ids[2]  # a known idempotency key: the same job
    assert _count_jobs(stack) == 5


def test_enqueue_bulk_reports_every_bad_line_and_queues_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        _jsonl(
            {"prompt": "fine"},
            "{not json",
            {"prompt": "fine too"},
            {"prompt": "x", "image_size": "huge"},
            {"prompt": "x", "colour": "red"},
            '["a list"]',
            {"prompt": "x", "idempotency_key": "k"},
            {"prompt": "y", "idempotency_key": "k"},
        )
    )
    done = imagegen(stack, "enqueue-bulk", str(path))
    assert done.returncode == 2
    reported = [line.split(":")[0] for line in done.stderr.splitlines() if line.startswith("line")]
    assert reported == ["line 2", "line 4", "line 5", "line 6", "line 8"], done.stderr
    assert "unknown size" in done.stderr and "colour" in done.stderr
    assert "nothing was queued" in done.stderr
    assert done.stdout == ""
    assert _count_jobs(stack) == 0
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_enqueue_bulk_with_the_broker_down_queues_nothing(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(_jsonl({"prompt": "one"}, {"prompt": "two"}))
    done = imagegen(stack, "enqueue-bulk", str(path), env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 69  # service unavailable
    assert "queued 0 of 2" in done.stderr and "broker could not be reached" in done.stderr
    assert _count_jobs(stack) == 0


@pytest.mark.slow
def test_retry_makes_a_new_linked_job_for_a_failed_one_only(running: Stack) -> None:
    failed = running.enqueue(unique("[[fal:401,ok]] first a bad key, then fine"))
    assert running.wait_terminal(failed)["status"] == "failed"
    done = imagegen(running, "retry", str(failed))
    assert done.returncode == 0, done.stderr
    new_id = done.stdout.strip()
    new = running.wait_terminal(uuid.UUID(new_id))
    assert new["status"] == "succeeded"
    assert new["retry_of"] == str(failed)
    assert _job(running, str(failed))["status"] == "failed"  # the old row stays as it ended

    twice = imagegen(running, "retry", str(failed))
    assert twice.returncode == 4  # conflict: the job's state does not allow it
    assert twice.stderr.strip() == f"error: job {failed} was already retried as job {new_id}"
    succeeded = imagegen(running, "retry", new_id)
    assert succeeded.returncode == 4 and "nothing to retry" in succeeded.stderr
    refused = running.enqueue(unique("[[fal:refuse:celebrity_likeness]] a star"))
    running.wait_terminal(refused)
    no = imagegen(running, "retry", str(refused))
    assert no.returncode == 4
    assert "celebrity_likeness" in no.stderr and "refusal is not retried" in no.stderr
    assert len(no.stderr.strip().splitlines()) == 1
    assert imagegen(running, "retry", str(uuid.uuid4())).returncode == 3
    assert _count_jobs(running) == 3


def test_retry_of_a_cancelled_job_is_refused(stack: Stack) -> None:
    job_id = stack.enqueue("a fox")
    assert imagegen(stack, "cancel", str(job_id)).returncode == 0
    done = imagegen(stack, "retry", str(job_id))
    assert done.returncode == 4 and "was cancelled" in done.stderr
    assert _count_jobs(stack) == 1
