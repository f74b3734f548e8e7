"""The HTTP API (`imagegen api`), metrics and job-event callbacks, on the real stack."""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from imagegen.models import JobStatus
from imagegen.worker import contract
from tests.conftest import API_KEY, Stack, add_jobs, unique

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]  # every test here runs real processes
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def _shared_api_url(_module_running: tuple[Stack, list[str]]) -> str:
    """One API process next to the module's shared worker (stopped with it)."""
    return _module_running[0].start_api()


@pytest.fixture
def api(shared_running: Stack, _shared_api_url: str) -> Iterator[httpx.Client]:
    """A client of the API on the module's worker: each test on fresh tables."""
    with httpx.Client(base_url=_shared_api_url, headers=AUTH, timeout=10) as client:
        yield client


def _terminal(api: httpx.Client, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "refused", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_every_route_but_health_needs_the_key(stack: Stack) -> None:
    base = stack.start_api()
    with httpx.Client(base_url=base) as anonymous:
        for method, path in [
            ("GET", "/jobs"),
            ("POST", "/jobs"),
            ("GET", f"/jobs/{uuid.uuid4()}"),
            ("POST", f"/jobs/{uuid.uuid4()}/cancel"),
            ("GET", "/stats"),
            ("GET", "/metrics"),
        ]:
            assert anonymous.request(method, path).status_code == 401, path
            wrong = {"Authorization": "Bearer not-the-key"}
            assert anonymous.request(method, path, headers=wrong).status_code == 401, path
        assert anonymous.get("/docs").status_code == 200
        assert "/jobs/{job_id}/cancel" in anonymous.get("/openapi.json").json()["paths"]


@pytest.mark.slow
def test_healthz_says_whether_a_worker_consumes_the_queue(stack: Stack) -> None:
    base = stack.start_api()
    with httpx.Client(base_url=base) as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json() == {
            "status": "degraded",
            "database": "ok",
            "broker": "ok",
            "workers": "none: no worker consumes the queue 'imagegen'",
        }
        stack.start_worker()
        health = anonymous.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json() == {
            "status": "ok",
            "database": "ok",
            "broker": "ok",
            "workers": "ok (1)",
        }


def test_create_read_and_idempotency(api: httpx.Client, stack: Stack) -> None:
    prompt = unique("a red kite over hills")
    body = {"prompt": prompt, "image_size": {"width": 1024, "height": 1024}, "num_images": 2}
    created = api.post("/jobs", json=body, headers={"Idempotency-Key": prompt})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    again = api.post("/jobs", json=body, headers={"Idempotency-Key": prompt})
    assert again.json()["id"] == job_id
    conflict = api.post(
        "/jobs", json={**body, "prompt": "something else"}, headers={"Idempotency-Key": prompt}
    )
    assert conflict.status_code == 422 and "already used" in conflict.text
    job = _terminal(api, job_id)
    assert job["status"] == "succeeded" and len(job["images"]) == 2
    assert job["attempt_log"][0]["outcome"] == "succeeded"
    assert stack.emulator.stats()["submissions_by_prompt"][prompt] == 1


def test_invalid_requests_get_422_with_field_errors_and_write_nothing(api: httpx.Client) -> None:
    bad = api.post("/jobs", json={"prompt": "  ", "num_images": 9, "quality": "ultra"})
    assert bad.status_code == 422
    fields = {p["field"] for p in bad.json()["detail"]}
    assert {"prompt", "num_images", "quality"} <= fields, bad.json()
    assert api.post("/jobs", json={"num_images": 1}).status_code == 422  # no prompt
    garbled = api.post("/jobs", content=b"{not", headers={"content-type": "application/json"})
    assert garbled.status_code == 422
    assert api.get("/stats").json()["total"] == 0
    assert api.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert api.post(f"/jobs/{uuid.uuid4()}/cancel").status_code == 404
    assert api.get("/jobs", params={"cursor": "garbage!"}).status_code == 422
    assert api.get("/jobs", params={"status": "nope"}).status_code == 422


@pytest.fixture
def bare(stack: Stack) -> Iterator[httpx.Client]:
    """The API without a worker: for answers that never need one."""
    with httpx.Client(base_url=stack.start_api(), headers=AUTH, timeout=10) as client:
        yield client


def test_hostile_bodies_get_a_422_naming_the_field_and_write_nothing(bare: httpx.Client) -> None:
    cases = {
        b'{"prompt": "caf\\udce9"}': ("prompt", "prompt is not valid UTF-8"),
        b'{"prompt": "a fox", "deadline_s": Infinity}': ("deadline_s", ""),
        b'{"prompt": "a fox", "deadline_s": -Infinity}': ("deadline_s", ""),
        b'{"prompt": "a fox", "deadline_s": NaN}': ("deadline_s", ""),
        b'{"prompt": "a fox", "deadline_s": 1e309}': ("deadline_s", ""),
        b'{"prompt": "a fox", "deadline_s": 8e307}': ("deadline_s", ""),
        b"{not json": ("body", "the body is not valid JSON"),
        b'{"prompt": "caf\xe9"}': ("body", "the body is not valid UTF-8"),
        b"": ("body", ""),
        b"[1, 2]": ("body", ""),
    }
    for raw, (field, message) in cases.items():
        answer = bare.post("/jobs", content=raw, headers=JSON)
        assert answer.status_code == 422, (raw, answer.text)
        assert answer.headers["content-type"] == "application/json", raw
        [problem] = answer.json()["detail"]
        assert problem["field"] == field and message in problem["message"], (raw, problem)
    assert bare.get("/stats").json()["total"] == 0


JSON = {"content-type": "application/json"}


def test_a_body_over_the_cap_is_a_413_and_writes_nothing(stack: Stack) -> None:
    base = stack.start_api(extra_env={"IMAGEGEN_API_MAX_BODY_BYTES": "2048"})
    big = json.dumps({"prompt": "x" * 3000}).encode()

    def streamed() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield big[:1500]
        yield big[1500:]

    with httpx.Client(base_url=base, headers=AUTH) as api:
        for answer in [
            api.post("/jobs", content=big, headers=JSON),
            api.post("/jobs", content=streamed(), headers=JSON),
            api.post("/fal/webhook", content=streamed(), headers=JSON),
        ]:
            assert answer.status_code == 413, answer.text
            assert answer.json() == {
                "detail": "the request body is over 2048 bytes (IMAGEGEN_API_MAX_BODY_BYTES)"
            }
        assert api.get("/stats").json()["total"] == 0
        assert api.post("/jobs", json={"prompt": unique("a small fox")}).status_code == 201


def test_cancelling_an_ended_job_is_a_409(bare: httpx.Client, stack: Stack) -> None:
    [done] = add_jobs(stack.database_url, 1, JobStatus.SUCCEEDED)
    [failed] = add_jobs(stack.database_url, 1, JobStatus.FAILED)
    for job_id, status in ((done, "succeeded"), (failed, "failed")):
        answer = bare.post(f"/jobs/{job_id}/cancel")
        assert answer.status_code == 409, answer.text
        assert answer.json() == {"detail": f"job {job_id} already {status}, not cancelled"}
        assert bare.get(f"/jobs/{job_id}").json()["status"] == status
    queued = bare.post("/jobs", json={"prompt": unique("a fox")}).json()["id"]
    for _ in range(2):  # cancelling a cancelled job again is fine
        answer = bare.post(f"/jobs/{queued}/cancel")
        assert answer.status_code == 200 and answer.json() == {"id": queued, "status": "cancelled"}


def test_an_unforeseen_error_is_a_json_500(stack: Stack) -> None:
    import asyncio

    from imagegen.worker.web import create_app

    app = create_app(stack.settings(imagegen_api_key=API_KEY), celery=stack.app())

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get("/boom")

    answer = asyncio.run(call())
    assert answer.status_code == 500
    expected = "internal error (RuntimeError); the API's log has the details"
    assert answer.json() == {"detail": expected}


class _FullPostgres(socketserver.BaseRequestHandler):
    """Answers every connection as a Postgres at max_connections does."""

    def handle(self) -> None:
        while len(head := self.request.recv(4)) == 4:
            body = self.request.recv(struct.unpack("!I", head)[0] - 4)
            if body[:4] in (struct.pack("!I", 80877103), struct.pack("!I", 80877104)):
                self.request.sendall(b"N")  # no SSL, no GSSAPI encryption: go on in plain
                continue
            fields = b"SFATAL\0VFATAL\0C53300\0Msorry, too many clients already\0\0"
            self.request.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)
            return


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_database_trouble_is_a_503_naming_the_dsn_without_its_password(stack: Stack) -> None:
    from imagegen.worker.db import downgrade

    full = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _FullPostgres)
    full.daemon_threads = True
    threading.Thread(target=full.serve_forever, daemon=True).start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens there once the socket is closed
    downgrade(stack.database_url)
    cases = [
        (f"imagegen:s3cret@127.0.0.1:{closed}/jobs", "does not answer"),
        (f"imagegen:s3cret@127.0.0.1:{full.server_address[1]}/jobs", "too many clients"),
        (stack.database_url.split("://", 1)[1], "is not migrated: run `imagegen db upgrade`"),
    ]
    try:
        for where, reason in cases:
            url = f"postgresql+psycopg://{where}"
            dsn = url.replace(":s3cret@", ":***@")
            base = stack.start_api(extra_env={"DATABASE_URL": url})
            with httpx.Client(base_url=base, headers=AUTH, timeout=20) as api:
                answers = [
                    api.get("/jobs"),
                    api.post("/jobs", json={"prompt": "a fox"}),
                    api.get("/stats"),
                    api.get(f"/jobs/{uuid.uuid4()}"),
                ]
            for answer in answers:
                assert answer.status_code == 503, answer.text
                detail = answer.json()["detail"]
                assert f"the database {dsn} " in detail and reason in detail, detail
                assert "\n" not in detail and "s3cret" not in detail, detail
    finally:
        full.shutdown()
        full.server_close()
    logs = stack.logs()
    assert logs.count("api.database_unavailable") == 12, logs
    assert "Traceback" not in logs and "s3cret" not in logs, logs


def test_listing_pages_with_a_cursor_and_filters(api: httpx.Client) -> None:
    ids = [api.post("/jobs", json={"prompt": unique(f"tile {i}")}).json()["id"] for i in range(5)]
    refused = api.post(
        "/jobs", json={"prompt": unique("[[fal:refuse:trademark_ip]] a mouse mascot")}
    ).json()["id"]
    for job_id in [*ids, refused]:
        _terminal(api, job_id)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"status": "succeeded", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/jobs", params=params).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen)) == 5
    by_category = api.get("/jobs", params={"category": "trademark_ip"}).json()["jobs"]
    assert [job["id"] for job in by_category] == [refused]
    stats = api.get("/stats").json()
    assert stats["by_status"]["succeeded"] == 5 and stats["by_refusal_category"] == {
        "trademark_ip": 1
    }


def test_cancel_a_running_job(api: httpx.Client, stack: Stack) -> None:
    job_id = api.post("/jobs", json={"prompt": unique("[[fal:ok+latency:20]] slow")}).json()["id"]
    deadline = time.monotonic() + 20
    while api.get(f"/jobs/{job_id}").json()["fal_request_id"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answer = api.post(f"/jobs/{job_id}/cancel")
    assert answer.json() == {"id": job_id, "status": "cancelled"}
    request_id = api.get(f"/jobs/{job_id}").json()["fal_request_id"]
    assert stack.emulator.stats()["requests"][request_id]["state"] == "CANCELLED"


def test_metrics_from_the_api_and_from_a_worker(stack: Stack) -> None:
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    port, poller_port = ports
    stack.start_worker(
        extra_env={
            "IMAGEGEN_METRICS_PORT": str(port),
            "IMAGEGEN_POLLER_METRICS_PORT": str(poller_port),
        }
    )
    api = stack.start_api()
    ok = stack.enqueue(unique("a metric teapot"))
    refused = stack.enqueue(unique("[[fal:refuse:hate_protected_group]] a banner"))
    stack.wait_terminal(ok), stack.wait_terminal(refused)
    with httpx.Client(headers=AUTH) as probe:
        worker = probe.get(f"http://127.0.0.1:{port}/metrics").text
        poller = probe.get(f"http://127.0.0.1:{poller_port}/metrics").text
        table = probe.get(f"{api}/metrics").text
    assert 'imagegen_jobs_finished_total{outcome="succeeded"} 1.0' in worker
    assert 'imagegen_jobs_finished_total{outcome="refused"} 1.0' in worker
    assert 'imagegen_refusals_total{category="hate_protected_group",source="fal"} 1.0' in worker
    assert "imagegen_fal_submissions_total 2.0" in worker
    assert "imagegen_fal_generation_seconds_count 1.0" in worker  # observed as it succeeds
    assert "imagegen_jobs_in_flight 0.0" in poller  # the poller counts the rows at fal
    assert 'imagegen_jobs{status="succeeded"} 1.0' in table
    assert 'imagegen_jobs{status="refused"} 1.0' in table
    assert "imagegen_queue_depth 0.0" in table


class _Receiver(BaseHTTPRequestHandler):
    answers: list[int]
    seen: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append((dict(self.headers), body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_callbacks_are_signed_and_retried_until_the_web_app_takes_them(stack: Stack) -> None:
    handler = type("Receiver", (_Receiver,), {"answers": [503], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "callback-secret-for-tests"
    try:
        # the enqueue side needs the secret too, and leave to call back to this machine
        stack.env |= {"IMAGEGEN_CALLBACK_SECRET": secret, "IMAGEGEN_CALLBACK_ALLOW_PRIVATE": "1"}
        stack.start_worker()
        url = f"http://127.0.0.1:{server.server_port}/hooks/imagegen"
        job_id = stack.enqueue(unique("[[fal:refuse:celebrity_likeness]] x"), callback_url=url)
        stack.wait_terminal(job_id)
        deadline = time.monotonic() + 30
        while len(handler.seen) < 2:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.1)
    finally:
        server.shutdown()
    assert len(handler.seen) == 2  # one 503, then delivered; never again
    (first_headers, _), (headers, body) = handler.seen
    event = Webhook(secret.encode()).verify(body, headers)  # what a web app does (raw secret)
    with pytest.raises(WebhookVerificationError):
        Webhook(b"another secret").verify(body, headers)
    assert first_headers["webhook-id"] == headers["webhook-id"]  # one event, delivered twice
    assert event["event"] == "job.finished"
    assert event["job"]["id"] == str(job_id) and event["job"]["status"] == "refused"
    assert event["job"]["refusal_category"] == "celebrity_likeness"
    assert set(event["job"]) == set(contract.Job.model_fields)
    assert event["job"]["images"] == [] and event["job"]["callback_url"] == url
    assert "callback.failed" in stack.logs() and "callback.delivered" in stack.logs()
    from sqlalchemy import select

    from imagegen.models import CallbackDelivery
    from imagegen.worker.db import session_scope

    query = select(CallbackDelivery.attempt, CallbackDelivery.outcome, CallbackDelivery.http_status)
    deadline = time.monotonic() + 10  # the row is written just after the answer
    while True:
        with session_scope(stack.database_url) as session:
            recorded = session.execute(query.order_by(CallbackDelivery.attempt)).all()
        if len(recorded) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [tuple(row) for row in recorded] == [(1, "failed", 503), (2, "delivered", 200)]
