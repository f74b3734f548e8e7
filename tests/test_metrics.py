"""Metrics: each role serves what it owns, and enqueueing processes do not grow label sets.

A real worker serves its counters on IMAGEGEN_WORKER_METRICS_PORT; the API's ``/metrics``
has its own (requests, enqueues) and the job table's counts, never a worker's counter
as a zero. Flower's ``worker=`` label gets one value per host that enqueues, not one per
process (Celery names a non-worker sender ``gen<pid>@host``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from imagegen.worker import metrics
from imagegen.worker.events import client_nodename
from tests.conftest import API_KEY, ROOT, Stack, unique
from tests.test_flower import Flower

AUTH = {"Authorization": f"Bearer {API_KEY}"}
WORKER_ONLY = {family.name for family in metrics.WORKER.collect()}
API_ONLY = {family.name for family in metrics.API.collect()}


def samples(text: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(text):
        yield from family.samples


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert found, f"no {name}{labels} in\n{text}"
    return found[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_the_api_exports_only_what_it_owns(stack: Stack) -> None:
    base = stack.start_api()
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        before = client.get("/metrics").text
        created = client.post("/jobs", json={"prompt": unique("a fox")})
        assert created.status_code == 201, created.text
        after = client.get("/metrics").text
    assert not families(after) & WORKER_ONLY, "the API exports a worker's metrics"
    assert {"imagegen_jobs", "imagegen_queue_depth"} <= families(after)
    enqueued = "imagegen_jobs_enqueued_total"
    assert value(after, enqueued) == value(before, enqueued) + 1
    posts = value(after, "imagegen_http_requests_total", method="POST", route="/jobs", status="201")
    assert posts >= 1
    assert value(after, "imagegen_jobs", status="queued") == 1


@pytest.mark.slow
def test_a_worker_serves_its_own_metrics(stack: Stack) -> None:
    port = _free_port()
    stack.start_worker(extra_env={"IMAGEGEN_WORKER_METRICS_PORT": str(port)})
    job_id = stack.enqueue(unique("a heron"))
    assert stack.wait_terminal(job_id)["status"] == "succeeded"
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert value(text, "imagegen_jobs_finished_total", outcome="succeeded") == 1
    assert value(text, "imagegen_fal_submissions_total") >= 1
    assert not families(text) & API_ONLY, "a worker exports the API's metrics"
    assert "imagegen_jobs" not in families(text), "the job table's counts are the API's"


def _flower_labels(text: str, event: str | None = None) -> set[str]:
    """The ``worker`` label values of Flower's event counter (for one event type)."""
    return {
        s.labels["worker"]
        for s in samples(text)
        if s.name == "flower_events_total" and event in (None, s.labels.get("type"))
    }


def _plain_flower(stack: Stack) -> Flower:
    """Flower as its defaults run it (compose's --purge_offline_workers drops the metrics of
    a sender that is not a live worker at each scrape; without it they stay, one per name)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(stack.env)
    cmd = [sys.executable, "-m", "celery", "-A", "imagegen.worker", "flower"]
    cmd += [f"--port={port}", "--address=127.0.0.1"]
    log = stack.log_dir / "flower.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    flower = Flower(proc, f"http://127.0.0.1:{port}", log, stack)
    flower.wait_for("/healthcheck", lambda: flower.get("/healthcheck").status_code == 200 or None)
    return flower


@pytest.mark.slow
def test_enqueueing_processes_share_one_label_value(stack: Stack) -> None:
    flower = _plain_flower(stack)
    try:
        stack.start_worker()
        online = re.compile(r"^flower_worker_online\{.*\} 1\.0$", re.M)
        scrape = lambda: flower.get("/metrics", auth=False).text  # noqa: E731
        flower.wait_for("the worker's heartbeat", lambda: online.search(scrape()) and True)
        env = {**os.environ, **stack.env}
        for n in range(3):  # three processes, three PIDs
            code = f"from imagegen import enqueue; enqueue({unique(f'an owl {n}')!r})"
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)

        def sent_three() -> str | None:
            text = scrape()
            sent = sum(s.value for s in samples(text) if s.labels.get("type") == "task-sent")
            return text if sent >= 3 else None

        text = flower.wait_for("three task-sent events", sent_three)
    finally:
        flower.stop()
    assert _flower_labels(text, "task-sent") == {client_nodename()}
    assert len(_flower_labels(text)) == 2, _flower_labels(text)  # the worker and the host
