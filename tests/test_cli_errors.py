"""One-line errors with the fix and a documented exit code, from the real `imagegen` process:
2 usage, 3 not found, 4 conflict, 69 service unavailable; --debug shows the traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.test_cli import _count_jobs, at_once, imagegen, one_line_error

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]  # every test here runs real processes


def test_in_an_empty_folder_read_commands_say_migrate_and_create_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    """No DATABASE_URL: the default SQLite file is named, not created by a read."""
    folder = tmp_path / "fresh"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["REDIS_URL"] = stack.redis_url
    job_id = str(uuid.uuid4())
    commands = (["jobs"], ["job", job_id], ["stats"], ["cancel", job_id], ["enqueue", "a fox"])
    runs = at_once(
        partial(
            subprocess.run,
            [sys.executable, "-m", "imagegen.worker.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=folder,
            timeout=30,
            check=False,
        )
        for args in commands
    )
    for done in runs:
        one_line_error(done, 69, "imagegen.db", "does not exist", "imagegen db upgrade")
        assert done.stdout == ""
    assert list(folder.iterdir()) == []


def test_postgres_unreachable_is_one_line_naming_the_dsn_without_its_password(
    stack: Stack,
) -> None:
    env = {"DATABASE_URL": "postgresql://u:secret@127.0.0.1:5999/x"}
    commands = (["jobs"], ["stats"], ["enqueue", "a fox"], ["cancel", str(uuid.uuid4())])
    for done in at_once(partial(imagegen, stack, *args, env=env) for args in commands):
        one_line_error(done, 69, "u:***@127.0.0.1:5999/x", "unreachable")
        assert "secret" not in done.stderr


@pytest.fixture
def limited_role(database_url: str) -> Iterator[str]:
    """A Postgres role allowed no connections: Postgres answers "too many connections"."""
    from sqlalchemy import create_engine, text

    from tests.conftest import PG_ADMIN_URL

    role = f"imagegen_cli_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
    yield database_url.replace("postgres@", f"{role}:hunter2@", 1)
    with admin.connect() as conn:
        conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
    admin.dispose()


def test_postgres_refusing_connections_is_one_line(stack: Stack, limited_role: str) -> None:
    done = imagegen(stack, "jobs", env={"DATABASE_URL": limited_role})
    one_line_error(done, 69, "refuses connections (too many clients)", ":***@127.0.0.1")
    assert "hunter2" not in done.stderr


def test_a_database_not_migrated_says_so_and_the_fix(stack: Stack) -> None:
    assert imagegen(stack, "db", "downgrade", "base").returncode == 0
    commands = (["jobs"], ["enqueue", "a fox"], ["sweep"])
    for done in at_once(partial(imagegen, stack, *args) for args in commands):
        one_line_error(done, 69, "is not migrated", "imagegen db upgrade")
    assert imagegen(stack, "db", "upgrade").returncode == 0
    assert imagegen(stack, "jobs").returncode == 0


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(stack: Stack) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.database_url)
    with engine.begin() as conn:  # the schema changed by hand behind Alembic's back
        conn.execute(text("ALTER TABLE jobs RENAME COLUMN prompt TO prompt_text"))
    engine.dispose()
    one_line_error(imagegen(stack, "jobs"), 1, "unexpected error", "--debug")
    debug = imagegen(stack, "--debug", "jobs")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_prompt_bytes_that_are_not_utf8_exit_2_and_write_nothing(stack: Stack) -> None:
    one_line_error(imagegen(stack, "enqueue", b"caf\xe9"), 2, "prompt is not valid UTF-8")
    stdin = subprocess.run(
        [sys.executable, "-m", "imagegen.worker.cli", "enqueue", "-"],
        input=b"caf\xe9 au lait",
        capture_output=True,
        env={**os.environ, **stack.env},
        timeout=30,
        check=False,
    )
    assert stdin.returncode == 2 and b"prompt is not valid UTF-8" in stdin.stderr
    assert _count_jobs(stack) == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["jobs", "--since", "99999999d"], "too far back"),
        (["jobs", "--since", "yesterday"], "use an ISO time"),
        (["enqueue", "x", "--size", "[/red] [bold]huge"], "[/red] [bold]huge"),
        (["enqueue", "--prompt-file", "/nonexistent/p.txt"], "No such file"),
        (["enqueue", "a fox", "--prompt-file", "/etc/hostname"], "exactly one"),
        (["enqueue"], "exactly one"),
    ],
)
def test_bad_arguments_are_one_line_with_exit_2(stack: Stack, args: list[str], words: str) -> None:
    one_line_error(imagegen(stack, *args), 2, words)
    assert _count_jobs(stack) == 0


def test_enqueue_reads_the_prompt_from_stdin_or_a_file(stack: Stack, tmp_path: Path) -> None:
    from_stdin = imagegen(stack, "enqueue", "-", stdin="a fox read from stdin\n")
    assert from_stdin.returncode == 0, from_stdin.stderr
    path = tmp_path / "prompt.txt"
    path.write_text("a heron\nstanding in reeds\n", encoding="utf-8")
    from_file = imagegen(stack, "enqueue", "--prompt-file", str(path))
    assert from_file.returncode == 0, from_file.stderr
    windows = tmp_path / "windows.txt"  # saved with CRLF line ends: read as plain newlines
    windows.write_bytes(b"a crane\r\nin the mist\r\n")
    from_windows = imagegen(stack, "enqueue", "--prompt-file", str(windows))
    assert from_windows.returncode == 0, from_windows.stderr
    prompts = [
        json.loads(imagegen(stack, "job", done.stdout.strip(), "--json").stdout)["prompt"]
        for done in (from_stdin, from_file, from_windows)
    ]
    assert prompts == [
        "a fox read from stdin",
        "a heron\nstanding in reeds",
        "a crane\nin the mist",
    ]


def test_cancel_of_an_ended_job_exits_4_and_changes_nothing(stack: Stack) -> None:
    from imagegen.models import JobStatus
    from tests.conftest import add_jobs

    (done_id,) = add_jobs(stack.database_url, 1, JobStatus.SUCCEEDED)
    one_line_error(imagegen(stack, "cancel", str(done_id)), 4, "already succeeded, not cancelled")
    assert stack.wait_terminal(done_id)["status"] == "succeeded"
    queued = stack.enqueue("a kettle")
    first = imagegen(stack, "cancel", str(queued))
    assert (first.returncode, first.stdout) == (0, "cancelled\n"), first.stderr
    one_line_error(imagegen(stack, "cancel", str(queued)), 4, "already cancelled")


def test_a_command_without_its_own_handler_still_gets_one_line(stack: Stack) -> None:
    """`main` reports what escapes a command: here Redis, down, for the account switch."""
    done = imagegen(stack, "account", "unlock", env={"REDIS_URL": "redis://:pw@127.0.0.1:1/0"})
    one_line_error(done, 69, "Redis redis://:***@127.0.0.1:1/0 is unreachable", "REDIS_URL")
    assert ":pw@" not in done.stderr
