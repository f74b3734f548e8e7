"""Flower, for real: a Flower process on the test broker sees our tasks as an operator would.

Flower runs with the options docker-compose.yml gives it (persistent, read-only); only its
port, address and state file are the test's. It only knows what it receives as events while
it is up, so it starts (and is seen to receive the worker's heartbeats) before any job is
enqueued. The job table stays the source of truth: each test waits for the row to be
terminal, then for Flower to agree.

Each stage run is its own task (``worker.jobs.dispatch``); a job's outcome in Flower is the
state of its last stage task (``_outcome_task``).
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
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from imagegen.worker.constants import JOB_QUEUE, NEXT_QUEUE, STORE_TASK, SUBMIT_TASK
from imagegen.worker.jobs.enqueue import enqueue_many
from tests.conftest import ROOT, Stack, unique

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # every test here runs real processes

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
    assert command[:4] == ["celery", "-A", "imagegen.worker", "flower"], command
    local = ("--port=", "--address=", "--db=")
    return [arg for arg in command[4:] if not arg.startswith(local)] + [f"--db={state_file}"]


def start_flower(stack: Stack, *, name: str = "flower") -> Flower:
    """Start Flower with the environment a worker gets; basic auth from FLOWER_BASIC_AUTH."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(stack.env, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    cmd = [sys.executable, "-m", "celery", "-A", "imagegen.worker", "flower"]
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


def _stage_order(task_id: str) -> tuple[int, int]:
    """A stage task's place in its job's life: the job id (submit), collect-1, store-1,
    submit-2, ..."""
    kind, _, number = task_id.partition("/")[2].rpartition("-")
    return (int(number), {"submit": 0, "collect": 1}.get(kind, 2)) if number else (1, 0)


def _stage_tasks(flower: Flower, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The job's stage tasks as Flower lists them (its search covers task ids), in order."""
    tasks: dict[str, dict[str, Any]] = flower.api("/api/tasks", search=str(job_id))
    mine = [t for tid, t in tasks.items() if tid == str(job_id) or tid.startswith(f"{job_id}/")]
    return sorted(mine, key=lambda task: _stage_order(task["uuid"]))


NOT_AN_OUTCOME = (
    "at_fal:",
    "resubmitting:",
    "skipped",
    "storing",
)  # the job goes on, or nothing done


def _outcome_task(flower: Flower, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The job's last stage task once it holds the job's outcome; None until then."""
    stages = _stage_tasks(flower, job_id)
    last = stages[-1] if stages else None
    if last is None or last["state"] in ("FAILURE", "REVOKED"):
        return last
    result = str(last.get("result") or "").strip("'\"")
    final = last["state"] == "SUCCESS" and not result.startswith(NOT_AN_OUTCOME)
    return last if final else None


def _assert_only_the_job_id(task: dict[str, Any], job_id: uuid.UUID, prompt: str) -> None:
    assert task["args"] == repr([str(job_id)]), task
    assert task["kwargs"] == "{}", task
    text = repr(task)
    assert prompt not in text and prompt.split("#")[0].strip() not in text, (
        f"the prompt is user data and must not reach Flower: {task}"
    )


def test_flower_shows_success_and_refusal_with_job_id_only(flower: Flower) -> None:
    stack = flower.stack
    began = datetime.now(UTC)
    ok_prompt = unique("a lighthouse at dawn")
    refused_prompt = unique("[[fal:refuse:celebrity_likeness]] a famous actor")
    ok_id, refused_id = stack.enqueue(ok_prompt), stack.enqueue(refused_prompt)

    row, refused_row = stack.wait_terminal(ok_id), stack.wait_terminal(refused_id)
    assert row["status"] == "succeeded", row
    assert refused_row["refusal_category"] == "celebrity_likeness", refused_row

    # The outcome is on the job's last stage task, SUCCESS: a refusal is an outcome the task
    # recorded, not a task failure. fal refuses this one at submit (the job id's task).
    ok = flower.wait_for("the succeeded job's outcome", partial(_outcome_task, flower, ok_id))
    refused = flower.wait_for("the refusal", partial(_outcome_task, flower, refused_id))
    assert (ok["uuid"], ok["name"]) == (f"{ok_id}/store-1", STORE_TASK), ok
    assert (refused["uuid"], refused["name"]) == (str(refused_id), SUBMIT_TASK), refused
    assert (ok["state"], ok["result"]) == ("SUCCESS", repr("succeeded")), ok
    assert (refused["state"], refused["result"]) == ("SUCCESS", "'refused:celebrity_likeness'")
    assert (refused["retries"], refused["exception"], refused["traceback"]) == (0, None, None)

    # While the job was at fal, its submit task said so: fal's request id, and since when.
    submitted = _task_in_state(flower, str(ok_id), "SUCCESS")
    assert submitted is not None and submitted["name"] == SUBMIT_TASK, submitted
    since = re.fullmatch(r"'at_fal:(\S+) since (\S+)'", submitted["result"] or "")
    assert since is not None, f"the at-fal submit does not show its request: {submitted}"
    assert since.group(1) == row["fal_request_id"], (since.group(1), row)
    at = datetime.fromisoformat(since.group(2))
    assert began - timedelta(seconds=1) <= at <= datetime.now(UTC), (since.group(2), began)

    for job_id, prompt in ((ok_id, ok_prompt), (refused_id, refused_prompt)):
        stages = _stage_tasks(flower, job_id)
        assert stages and stages[-1]["uuid"] in (str(job_id), f"{job_id}/store-1"), stages
        for task in stages:
            queue = JOB_QUEUE if task["name"] == SUBMIT_TASK else NEXT_QUEUE
            assert task["routing_key"] == queue, task
            assert task["sent"] and task["received"], f"task-sent/received missing: {task}"
            _assert_only_the_job_id(task, job_id, prompt)


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
        (f"/api/task/async-apply/{SUBMIT_TASK}", {"args": [job_id]}),
        (f"/api/task/send-task/{SUBMIT_TASK}", {"args": [job_id]}),
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
        first.wait_for("the job's outcome", partial(_outcome_task, first, job_id))
    finally:
        first.stop()
    assert first.proc.returncode == 0, first.diagnostics()

    second = start_flower(stack, name="flower-restarted")
    try:
        info = _outcome_task(second, job_id)
        assert info is not None, f"history lost across a restart\n{second.diagnostics()}"
        assert (info["uuid"], info["result"]) == (f"{job_id}/store-1", repr("succeeded"))
        at_fal = _task_in_state(second, str(job_id), "SUCCESS")
        assert at_fal is not None and "at_fal:" in at_fal["result"], at_fal
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
            "a batch's job as SUCCESS", partial(_task_in_state, flower, str(job_id), "SUCCESS")
        )
        assert task["sent"] and task["received"], f"task-sent/received events missing: {task}"
