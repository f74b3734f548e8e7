"""Logs: one renderer for our lines and everyone else's, the worker's level, the access log.

With ``IMAGEGEN_LOG_FORMAT=json`` a real worker and the real API (``imagegen api``) write
nothing but JSON objects, one a line: Celery's and uvicorn's own lines included.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from imagegen.worker import celery_app
from imagegen.worker.logs import configure, get_logger
from tests.conftest import API_KEY, ROOT, Stack, unique

JSON_ENV = {"IMAGEGEN_LOG_FORMAT": "json"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(autouse=True)
def _root_logger_as_found() -> Iterator[None]:
    """``configure()`` adds a handler to the root logger: the next test finds it without."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of a process's output as a JSON object; fails naming the first that is not."""
    lines: list[dict[str, Any]] = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            value = json.loads(line)
        except ValueError:
            pytest.fail(f"{log.name}:{number} is not JSON: {line!r}\n{log.read_text()}")
        assert isinstance(value, dict), f"{log.name}:{number}: {line!r}"
        lines.append(value)
    assert lines, f"{log.name} is empty"
    return lines


@pytest.mark.usefixtures("restore_structlog")
def test_the_worker_loglevel_filters_our_own_lines(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        celery_app._check_configuration(sender=SimpleNamespace(loglevel=logging.WARNING))
        log = get_logger("tests.level")
        log.info("job.succeeded", job_id="j1")
        log.warning("job.failed", job_id="j2")
        celery_app._per_process()  # a prefork child keeps the level
        get_logger("tests.level.child").info("job.succeeded", job_id="j3")
        err = capsys.readouterr().err
        assert "job.failed" in err and "j2" in err
        assert "job.succeeded" not in err
        celery_app._check_configuration(sender=SimpleNamespace(loglevel=logging.INFO))
        get_logger("tests.level.info").info("job.succeeded", job_id="j4")
        assert "j4" in capsys.readouterr().err
    finally:
        celery_app._log_level = logging.INFO


@pytest.mark.usefixtures("restore_structlog")
def test_stdlib_and_structlog_lines_share_the_json_renderer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("json")
    get_logger("worker.pipeline").info("job.succeeded", job_id="j1")
    logging.getLogger("celery.worker.consumer").info("%s ready.", "w1@host")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("celery.app.trace").exception("Task %s raised", "t1")
    ours, celery, failed = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert ours["event"] == "job.succeeded" and ours["job_id"] == "j1"
    assert celery["event"] == "w1@host ready." and celery["logger"] == "celery.worker.consumer"
    for line in (ours, celery, failed):
        assert line["level"] in ("info", "error") and line["timestamp"].endswith("Z")
    assert "RuntimeError: boom" in failed["exception"]


@pytest.mark.slow
def test_a_json_worker_writes_only_json(stack: Stack) -> None:
    stack.start_worker(extra_env=JSON_ENV)
    job_id = stack.enqueue(unique("a lighthouse"))
    assert stack.wait_terminal(job_id)["status"] == "succeeded"
    stack.stop()  # its shutdown lines too
    lines = json_lines(stack.log_dir / "worker-0.log")
    events = [str(line.get("event")) for line in lines]
    assert any(e.endswith(" ready.") for e in events), events
    loggers = {line.get("logger", "") for line in lines}
    assert any(name.startswith("celery") for name in loggers), loggers  # Celery's own lines
    assert any(str(job_id) in json.dumps(line) for line in lines if line.get("job_id"))


@pytest.mark.slow
def test_a_json_api_writes_only_json_with_an_access_log(stack: Stack) -> None:
    base = stack.start_api(extra_env=JSON_ENV)
    prompt = unique("a secret garden")
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        created = client.post("/jobs", json={"prompt": prompt})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        read = client.get(f"/jobs/{job_id}", params={"cursor": "query-secret"})
        assert read.status_code == 200
        mine = client.get("/healthz", headers={"X-Request-ID": "req-42"})
        assert mine.headers["x-request-id"] == "req-42"
        assert client.get("/no/such/route").status_code == 404
    stack.stop()
    log = next(stack.log_dir.glob("api-*.log"))
    lines = json_lines(log)
    events = [str(line.get("event")) for line in lines]
    assert any(e.startswith("Uvicorn running on") for e in events), events
    assert any(e == "Application startup complete." for e in events), events
    access = {(a["method"], a["route"]): a for a in lines if a.get("event") == "http.request"}
    post, get = access["POST", "/jobs"], access["GET", "/jobs/{job_id}"]
    assert post["status"] == 201 and post["path"] == "/jobs" and post["duration_ms"] >= 0
    assert get["path"] == f"/jobs/{job_id}" and get["request_id"] == read.headers["x-request-id"]
    assert access["GET", "/healthz"]["request_id"] == "req-42"
    assert access["GET", "<unmatched>"]["status"] == 404
    text = log.read_text()
    for secret in (prompt, API_KEY, "query-secret", "Bearer"):
        assert secret not in text, f"{secret!r} is in the API's log"


@pytest.mark.slow
def test_beat_as_compose_runs_it_writes_only_json(stack: Stack, tmp_path: Path) -> None:
    from tests.test_compose import argv

    command = argv("beat")
    command[command.index("--schedule") + 1] = str(tmp_path / "beat-schedule")
    log = tmp_path / "beat.log"
    env = {**os.environ, **stack.env, **JSON_ENV}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *command], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while b"beat: Starting" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    assert any(line["logger"] == "celery.beat" for line in json_lines(log))
