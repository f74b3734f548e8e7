"""The imagegen command as a user runs it: a real process, real Postgres and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import Stack, unique

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]  # every test here runs real processes


def imagegen(
    stack: Stack | None,
    *args: str | bytes,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess (stdout and stderr are pipes, not a terminal)."""
    full_env = {**os.environ, **(stack.env if stack else {}), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "imagegen.worker.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


T = TypeVar("T")


def at_once(calls: Iterable[Callable[[], T]]) -> list[T]:
    """Independent commands run side by side, results in order: a call is mostly the
    process's start-up (imports), and CI has two cores."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: call(), list(calls)))


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """The process exited ``code`` with one line on stderr naming ``words``, no traceback."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def _count_jobs(stack: Stack) -> int:
    from sqlalchemy import func, select

    from imagegen.models import Job
    from imagegen.worker.db import session_scope

    with session_scope(stack.database_url) as session:
        return session.execute(select(func.count()).select_from(Job)).scalar_one()


def test_enqueue_prints_the_job_id_alone_and_a_worker_finishes_it(running: Stack) -> None:
    done = imagegen(
        running, "enqueue", unique("a tin robot"), "--size", "1024x1536", "--quality", "low"
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    uuid.UUID(job_id)
    running.wait_terminal(uuid.UUID(job_id))
    shown = json.loads(imagegen(running, "job", job_id, "--json").stdout)
    assert shown["status"] == "succeeded"
    assert shown["params"]["image_size"] == {"width": 1024, "height": 1536}
    assert shown["attempt_log"][0]["outcome"] == "succeeded"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["   "], "prompt is empty"),
        (["a\x01b", "--size", "huge"], "unknown size"),
        (["x", "--size", "1000x1000"], "multiples of 16"),
        (["x", "--quality", "ultra"], "unknown quality"),
        (["x", "--num-images", "9"], "between 1 and 4"),
        (["x" * 40_000], "limit is"),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_error_and_no_row(
    stack: Stack, args: list[str], words: str
) -> None:
    done = imagegen(stack, "enqueue", *args)
    assert done.returncode == 2
    assert words in done.stderr
    assert "Traceback" not in done.stderr
    assert _count_jobs(stack) == 0


def test_idempotency_key_returns_the_same_job_and_conflicts_on_other_params(stack: Stack) -> None:
    key = f"order-{uuid.uuid4().hex[:6]}"
    first = imagegen(stack, "enqueue", "a blue bicycle", "--idempotency-key", key)
    again = imagegen(stack, "enqueue", "a blue bicycle", "--idempotency-key", key)
    assert first.returncode == again.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    other = imagegen(stack, "enqueue", "a red bicycle", "--idempotency-key", key)
    one_line_error(other, 4, "already used")
    assert _count_jobs(stack) == 1


def test_unknown_job_and_bad_database_url(stack: Stack) -> None:
    unknown, nope, bad, bad_redis, cancel = at_once(
        [
            lambda: imagegen(stack, "job", str(uuid.uuid4())),
            lambda: imagegen(stack, "job", "nope"),
            lambda: imagegen(stack, "stats", env={"DATABASE_URL": "not a url"}),
            lambda: imagegen(stack, "enqueue", "a fox", env={"REDIS_URL": "http://nope"}),
            lambda: imagegen(stack, "cancel", str(uuid.uuid4())),
        ]
    )
    one_line_error(unknown, 3, "no job with id")
    one_line_error(nope, 2, "not a job id")
    assert bad.returncode == 2 and "DATABASE_URL" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert bad_redis.returncode == 2 and "REDIS_URL" in bad_redis.stderr
    one_line_error(cancel, 3, "no job with id")


def test_sql_and_markup_are_stored_verbatim(stack: Stack) -> None:
    prompt = "'; DROP TABLE jobs; -- <script>alert(1)</script>"
    job_id = imagegen(stack, "enqueue", prompt).stdout.strip()
    shown = json.loads(imagegen(stack, "job", job_id, "--json").stdout)
    assert shown["prompt"] == prompt
    assert shown["status"] == "queued"


def test_jobs_and_stats_answer_what_happened(running: Stack) -> None:
    refused = running.enqueue(unique("[[fal:refuse:celebrity_likeness]] a star"))
    ok = running.enqueue(unique("a calm lake"))
    running.wait_terminal(refused)
    running.wait_terminal(ok)
    rows = json.loads(imagegen(running, "jobs", "--status", "refused", "--json").stdout)
    assert [r["id"] for r in rows] == [str(refused)]
    assert rows[0]["refusal_category"] == "celebrity_likeness"
    by_cat = json.loads(
        imagegen(
            running, "jobs", "--category", "celebrity_likeness", "--since", "1h", "--json"
        ).stdout
    )
    assert len(by_cat) == 1
    stats = json.loads(imagegen(running, "stats", "--json").stdout)
    assert stats["by_status"]["refused"] == 1 and stats["by_status"]["succeeded"] == 1
    assert stats["by_refusal_category"] == {"celebrity_likeness": 1}
    human = imagegen(running, "stats")
    assert "celebrity_likeness" in human.stdout


def test_enqueue_with_the_broker_down_writes_nothing(stack: Stack) -> None:
    done = imagegen(stack, "enqueue", "a moth", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    one_line_error(done, 69, "broker could not be reached")
    assert _count_jobs(stack) == 0


def test_worker_refuses_to_start_against_real_fal_without_a_key(stack: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "SSL_CERT"))}
    env.update(REDIS_URL=stack.redis_url, DATABASE_URL=stack.database_url)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "imagegen.worker",
            "worker",
            "--pool",
            "threads",
            "-c",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "FAL_KEY is not set" in done.stderr
