"""``imagegen doctor`` against the real services: all green with a running stack, and one
clear ✗ line (with the fix) and a non-zero exit for each service that is missing."""

from __future__ import annotations

import socket
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.test_cli import at_once
from tests.test_cli_comforts import SMALL_POOL, imagegen

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the socket goes


def _lines(output: str) -> dict[str, str]:
    """check name -> its line"""
    return {line.split()[1]: line for line in output.splitlines()}


def test_all_green_with_the_running_stack(stack: Stack) -> None:
    stack.start_worker(extra_env=SMALL_POOL)
    done = imagegen(stack, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = _lines(done.stdout)
    assert list(lines) == ["database", "migrations", "redis", "worker", "fal", "storage", "keys"]
    assert all(line.startswith("✓ ") for line in lines.values()), done.stdout
    assert "1 consuming 'imagegen'" in lines["worker"]
    assert stack.emulator.host_port in lines["fal"]
    assert "test-key-not-secret" not in done.stdout


def test_no_worker_and_an_old_schema_fail_with_the_fix(stack: Stack) -> None:
    from imagegen.worker.db import downgrade

    downgrade(stack.database_url, "0007")
    done = imagegen(stack, "doctor")
    assert done.returncode == 1
    lines = _lines(done.stdout)
    assert lines["database"].startswith("✓ ")
    from alembic.script import ScriptDirectory

    from imagegen.worker.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config(stack.database_url)).get_current_head()
    assert lines["migrations"].startswith(f"✗ migrations at 0007, head is {head}")
    assert "imagegen db upgrade" in lines["migrations"]
    assert lines["worker"].startswith("✗ worker     no worker consumes the queue 'imagegen'")
    assert "celery -A imagegen.worker worker" in lines["worker"]


def test_storage_that_cannot_be_written_is_named_with_the_fix(stack: Stack, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = imagegen(stack, "doctor", env={"IMAGEGEN_STORAGE_URL": f"file:{blocker}"})
    assert done.returncode == 1
    line = _lines(done.stdout)["storage"]
    assert line.startswith("✗ storage") and "a-file" in line, line
    assert "IMAGEGEN_STORAGE_URL" in line


def test_redis_at_a_closed_port(stack: Stack) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    done = imagegen(stack, "doctor", env={"REDIS_URL": url})
    assert done.returncode == 1
    lines = _lines(done.stdout)
    assert lines["redis"].startswith(f"✗ redis      {url}: ")
    assert "fix REDIS_URL" in lines["redis"]
    assert lines["worker"].startswith("- worker")  # nothing to ask
    assert lines["database"].startswith("✓ ")


def test_postgres_at_a_closed_port_hides_the_password(stack: Stack) -> None:
    port = _closed_port()
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:{port}/x"
    done, human = at_once(
        partial(imagegen, stack, "doctor", *json_flag, env={"DATABASE_URL": url})
        for json_flag in (["--json"], [])
    )
    assert done.returncode == 1
    assert "hunter2-secret" not in done.stdout
    lines = _lines(human.stdout)
    assert lines["database"].startswith(
        f"✗ database   postgresql+psycopg://postgres:***@127.0.0.1:{port}/x"
    )
    assert "fix DATABASE_URL" in lines["database"]
    assert lines["migrations"].startswith("- migrations skipped")
    assert "Traceback" not in human.stderr


def test_fal_unreachable_and_a_missing_moderation_key(stack: Stack) -> None:
    host = f"127.0.0.1:{_closed_port()}"
    env = {"FAL_QUEUE_RUN_HOST": host, "IMAGEGEN_MODERATION": "rules,openai"}
    done = imagegen(stack, "doctor", env=env)
    assert done.returncode == 1
    lines = _lines(done.stdout)
    assert lines["fal"].startswith(f"✗ fal        https://{host}: ")
    assert lines["keys"].startswith("✗ keys       not set: OPENAI_API_KEY")
    ok = imagegen(stack, "doctor", env={**env, "OPENAI_API_KEY": "sk-do-not-print"})
    assert _lines(ok.stdout)["keys"].startswith("✓ keys       FAL_KEY set, OPENAI_API_KEY set")
    assert "sk-do-not-print" not in ok.stdout
