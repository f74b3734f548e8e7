"""Flower, for real: a Flower process on the test broker sees our tasks as an operator would.

Flower runs with the options docker-compose.yml gives it (persistent, read-only); only its
port, address and state file are the test's. It only knows what it receives as events while
it is up, so it starts (and is seen to receive the worker's heartbeats) before any job is
enqueued. The job table stays the source of truth: each test waits for the row to be
terminal, then for Flower to agree.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.conftest import ROOT, Stack, unique
from worker.api import enqueue_many
from worker.constants import JOB_QUEUE, RUN_JOB_TASK

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "ops", "flower-test-secret"
WAIT_S = 30.0
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Flower:
    """A Flower process on the test's broker, and an HTTP client for its API."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path
    stack: Stack

    def get(self, path: str, *, auth: bool = True, **params: Any) -> httpx.Response:
        return httpx.get(
            self.base_url + path,
            params=params,
            auth=(USER, PASSWORD) if auth else None,
            timeout=5,
        )

    def api(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def diagnostics(self) -> str:
        """Flower's and the workers' logs, for failure messages."""
        return f"--- logs (flower.log, worker-*.log) ---\n{self.stack.logs()}"

    def wait_for(self, what: str, probe: Callable[[], T | None]) -> T:
        """Poll ``probe`` until it returns something, or fail after WAIT_S saying what."""
        deadline = time.monotonic() + WAIT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"flower exited {self.proc.returncode} {what}\n{self.diagnostics()}")
            try:
                found = probe()
            except httpx.TransportError:
                found = None
            if found is not None:
                return found
            if time.monotonic() > deadline:
                pytest.fail(
                    f"flower did not show {what} within {WAIT_S:.0f} s\n{self.diagnostics()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Flower saves its state when --persistent
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def compose_options(state_file: Path) -> list[str]:
    """Flower's options as docker-compose.yml runs it, with this test's state file."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = [str(arg) for arg in compose["services"]["flower"]["command"]]
    assert command[:4] == ["celery", "-A", "worker", "flower"], command
    local = ("--port=", "--address=", "--db=")
    return [arg for arg in command[4:] if not arg.startswith(local)] + [f"--db={state_file}"]


def start_flower(stack: Stack, *, name: str = "flower") -> Flower:
    """Start Flower with the environment a worker gets; basic auth from FLOWER_BASIC_AUTH."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(stack.env, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    cmd = [sys.executable, "-m", "celery", "-A", "worker", "flower"]
    cmd += [f"--port={port}", "--address=127.0.0.1"]
    cmd += compose_options(stack.log_dir / "flower-state")
    log = stack.log_dir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    flower = Flower(proc, f"http://127.0.0.1:{port}", log, stack)
    try:
        flower.wait_for("/healthcheck answering", lambda: _healthy(flower))
    except BaseException:
        flower.stop()
        raise
    return flower


def _healthy(flower: Flower) -> bool | None:
    return True if flower.get("/healthcheck", auth=False).status_code == 200 else None


def _sees_a_worker(flower: Flower) -> str | None:
    """A worker's name once Flower has its events (Prometheus gauge fed by heartbeats)."""
    metrics = flower.get("/metrics", auth=False).text
    online = re.search(r'^flower_worker_online\{worker="([^"]+)"\} 1\.0$', metrics, re.M)
    return online.group(1) if online else None


@pytest.fixture
def flower(stack: Stack) -> Iterator[Flower]:
    """Flower up and receiving events from one running worker, before any job exists."""
    process = start_flower(stack)
    try:
        stack.start_worker()
        process.wait_for("the worker's heartbeat events", lambda: _sees_a_worker(process))
        yield process
    finally:
        process.stop()
        print(process.diagnostics())  # pytest shows it for a failed test only


def _task_in_state(flower: Flower, task_id: str, state: str) -> dict[str, Any] | None:
    response = flower.get(f"/api/task/info/{task_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, f"task info: {response.status_code} {response.text}"
    info: dict[str, Any] = response.json()
    return info if info.get("state") == state else None


def _listed(flower: Flower, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The task whose args carry this job id, from the task list (as the UI lists them)."""
    tasks: dict[str, dict[str, Any]] = flower.api("/api/tasks", limit=100)
    matches = [t for t in tasks.values() if str(job_id) in (t.get("args") or "")]
    return matches[0] if len(matches) == 1 and matches[0].get("state") == "SUCCESS" else None


def _assert_only_the_job_id(task: dict[str, Any], job_id: uuid.UUID, prompt: str) -> None:
    assert task["args"] == repr([str(job_id)]), task
    assert task["kwargs"] == "{}", task
    text = repr(task)
    assert prompt not in text and prompt.split("#")[0].strip() not in text, (
        f"the prompt is user data and must not reach Flower: {task}"
    )


def test_flower_shows_success_and_refusal_with_job_id_only(flower: Flower) -> None:
    stack = flower.stack
    ok_prompt = unique("a lighthouse at dawn")
    refused_prompt = unique("[[fal:refuse:celebrity_likeness]] a famous actor")
    ok_id, refused_id = stack.enqueue(ok_prompt), stack.enqueue(refused_prompt)

    assert stack.wait_terminal(ok_id)["status"] == "succeeded"
    refused_row = stack.wait_terminal(refused_id)
    assert (refused_row["status"], refused_row["refusal_category"]) == (
        "refused",
        "celebrity_likeness",
    ), refused_row

    # The task id is the job id (worker/api.py publishes it so), and the task ends SUCCESS:
    # a refusal is an outcome the task recorded, not a task failure.
    ok = flower.wait_for(
        "the succeeded job as SUCCESS", lambda: _task_in_state(flower, str(ok_id), "SUCCESS")
    )
    refused = flower.wait_for(
        "the refused job as SUCCESS", lambda: _task_in_state(flower, str(refused_id), "SUCCESS")
    )
    assert ok["name"] == refused["name"] == RUN_JOB_TASK
    assert (ok["uuid"], refused["uuid"]) == (str(ok_id), str(refused_id))
    assert ok["routing_key"] == refused["routing_key"] == JOB_QUEUE
    assert ok["sent"] and ok["received"], f"task-sent/received events missing: {ok}"
    assert "succeeded" in ok["result"], ok
    assert "refused:celebrity_likeness" in refused["result"], refused
    assert refused["retries"] == 0, f"a refusal is never retried: {refused}"
    assert refused["exception"] is None and refused["traceback"] is None, refused
    _assert_only_the_job_id(ok, ok_id, ok_prompt)
    _assert_only_the_job_id(refused, refused_id, refused_prompt)

    for job_id, prompt in ((ok_id, ok_prompt), (refused_id, refused_prompt)):
        listed = flower.wait_for(f"job {job_id} in /api/tasks", partial(_listed, flower, job_id))
        assert listed["uuid"] == str(job_id)
        _assert_only_the_job_id(listed, job_id, prompt)


def test_flower_api_requires_basic_auth(flower: Flower) -> None:
    for path in ("/api/tasks", "/api/workers", f"/api/task/info/{uuid.uuid4()}", "/"):
        assert flower.get(path, auth=False).status_code == 401, path
    wrong = httpx.get(flower.base_url + "/api/tasks", auth=(USER, "wrong"), timeout=5)
    assert wrong.status_code == 401
    assert flower.get("/api/tasks").status_code == 200


def test_flower_is_read_only(flower: Flower) -> None:
    """No task sent, revoked or killed, no worker shut down through Flower."""
    job_id = str(uuid.uuid4())
    worker = flower.wait_for("a worker", lambda: _sees_a_worker(flower))
    attempts = [
        (f"/api/task/async-apply/{RUN_JOB_TASK}", {"args": [job_id]}),
        (f"/api/task/send-task/{RUN_JOB_TASK}", {"args": [job_id]}),
        (f"/api/task/revoke/{job_id}", None),
        (f"/api/worker/shutdown/{worker}", None),
    ]
    for path, body in attempts:
        response = httpx.post(flower.base_url + path, json=body, auth=(USER, PASSWORD), timeout=10)
        refused = response.status_code == 403 and "read only" in response.text.lower()
        assert refused, f"POST {path}: {response.status_code} {response.text}"
    assert all(proc.poll() is None for proc in flower.stack.workers), "a worker was shut down"


def test_flower_keeps_its_history_across_a_restart(stack: Stack) -> None:
    first = start_flower(stack)
    try:
        stack.start_worker()
        first.wait_for("the worker's heartbeat events", lambda: _sees_a_worker(first))
        job_id = stack.enqueue(unique("a quiet harbour"))
        assert stack.wait_terminal(job_id)["status"] == "succeeded"
        first.wait_for("the job as SUCCESS", lambda: _task_in_state(first, str(job_id), "SUCCESS"))
    finally:
        first.stop()
    assert first.proc.returncode == 0, first.diagnostics()

    second = start_flower(stack, name="flower-restarted")
    try:
        info = _task_in_state(second, str(job_id), "SUCCESS")
        assert info is not None, f"history lost across a restart\n{second.diagnostics()}"
        assert "succeeded" in info["result"]
    finally:
        second.stop()


def test_flower_reads_the_batched_sent_events_of_enqueue_many(flower: Flower) -> None:
    """enqueue_many publishes its task-sent events a batch to a message (task.multi)."""
    stack = flower.stack
    prompts = [unique(f"a lighthouse, batch item {i}") for i in range(3)]
    ids = enqueue_many(prompts, settings=stack.settings(), app=stack.app())
    for job_id in ids:
        assert stack.wait_terminal(job_id)["status"] == "succeeded"
        task = flower.wait_for(
            "a batch's job as SUCCESS",
            lambda job_id=job_id: _task_in_state(flower, str(job_id), "SUCCESS"),
        )
        assert task["sent"] and task["received"], f"task-sent/received events missing: {task}"
