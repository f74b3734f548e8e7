"""Unit tests for worker.fal.gateway.FalGateway over an httpx.MockTransport.

No network: the mock answers every request (but for connection reuse, measured against a
local HTTP server). fal-client builds URLs from
``fal_client.client.QUEUE_URL_FORMAT`` (the emulator's host in the test session), which
does not matter since the mock intercepts everything.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from imagegen.worker.errors import PermanentFalError, PolicyRefusal, TransientFalError
from imagegen.worker.fal import transport
from imagegen.worker.fal.gateway import FalGateway, FalStatus

MODEL = "openai/gpt-image-2"
RID = "80e7a3c1-0000-4000-8000-000000000001"
ARGS = {"prompt": "a red fox", "image_size": "landscape_4_3"}

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """SubmitHooks that remember the order of calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def sending(self) -> None:
        self.calls.append("sending")

    def not_sent(self) -> None:
        self.calls.append("not_sent")


class Mock:
    """A handler that logs every request and answers from a function."""

    def __init__(self, answer: Handler, *, limit: int | None = None) -> None:
        self.answer = answer
        self.limit = limit  # more requests than this fail the test at once
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.limit is not None and len(self.requests) > self.limit:
            # Not an httpx error, so it escapes fal-client's retry loop instead of sleeping.
            raise AssertionError(f"unexpected request #{len(self.requests)}: {request.url}")
        return self.answer(request)

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]


def gateway(mock: Mock) -> FalGateway:
    return FalGateway(
        key="k", submit_timeout_s=1, poll_timeout_s=1, inner_transport=httpx.MockTransport(mock)
    )


def submit_answer(request: httpx.Request) -> httpx.Response:
    base = f"{request.url.scheme}://{request.url.host}/openai/gpt-image-2/requests/{RID}"
    return httpx.Response(
        200,
        json={
            "request_id": RID,
            "response_url": base,
            "status_url": base + "/status",
            "cancel_url": base + "/cancel",
            "queue_position": 0,
        },
    )


def raising(exc: Exception) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    return answer


# --- submit --------------------------------------------------------------------------------


def test_submit_returns_request_id_and_sends_one_post() -> None:
    mock = Mock(submit_answer)
    hooks = Recorder()
    assert gateway(mock).submit(MODEL, ARGS, hooks) == RID
    assert mock.methods() == ["POST"]
    assert hooks.calls == ["sending"]
    sent = mock.requests[0]
    assert sent.url.path == "/openai/gpt-image-2"
    assert json.loads(sent.content) == ARGS
    assert sent.headers["authorization"] == "Key k"


def test_submit_429_is_not_retried_by_fal_client() -> None:
    mock = Mock(lambda r: httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "x"}))
    gw = gateway(mock)
    hooks = Recorder()
    for n in (1, 2, 3):
        mock.limit = n
        with pytest.raises(TransientFalError) as info:
            gw.submit(MODEL, ARGS, hooks)
        assert info.value.retry_after_s == 7
        assert info.value.http_status == 429
        assert len(mock.requests) == n  # exactly one POST per submit() call
    assert mock.methods() == ["POST"] * 3
    assert hooks.calls == ["sending"] * 3


def test_submit_nginx_503_is_not_retried_by_fal_client() -> None:
    html = b"<html><body><center>nginx</center></body></html>"
    mock = Mock(lambda r: httpx.Response(503, content=html), limit=1)
    with pytest.raises(TransientFalError, match="HTML error page"):
        gateway(mock).submit(MODEL, ARGS, Recorder())
    assert len(mock.requests) == 1


def test_submit_connect_error_calls_not_sent() -> None:
    mock = Mock(raising(httpx.ConnectError("connection refused")), limit=1)
    hooks = Recorder()
    with pytest.raises(TransientFalError) as info:
        gateway(mock).submit(MODEL, ARGS, hooks)
    assert hooks.calls == ["sending", "not_sent"]
    assert len(mock.requests) == 1
    assert "ConnectError" in info.value.message
    assert info.value.resubmit is False


def test_submit_read_timeout_is_transient_and_counted_as_sent() -> None:
    mock = Mock(raising(httpx.ReadTimeout("timed out")), limit=1)
    hooks = Recorder()
    with pytest.raises(TransientFalError) as info:
        gateway(mock).submit(MODEL, ARGS, hooks)
    assert hooks.calls == ["sending"]  # the POST may have reached fal: never "not_sent"
    assert len(mock.requests) == 1  # and it is never re-POSTed
    assert "ReadTimeout" in info.value.message


def test_submit_remote_protocol_error_is_sent_once() -> None:
    mock = Mock(raising(httpx.RemoteProtocolError("peer closed connection")), limit=1)
    hooks = Recorder()
    with pytest.raises(TransientFalError):
        gateway(mock).submit(MODEL, ARGS, hooks)
    assert hooks.calls == ["sending"]
    assert len(mock.requests) == 1


def test_submit_content_policy_is_refusal() -> None:
    detail = [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}]
    mock = Mock(lambda r: httpx.Response(422, json={"detail": detail}))
    with pytest.raises(PolicyRefusal):
        gateway(mock).submit(MODEL, ARGS, Recorder())
    assert len(mock.requests) == 1


def test_submit_answer_missing_urls_is_malformed() -> None:
    mock = Mock(lambda r: httpx.Response(200, json={"request_id": RID}))
    with pytest.raises(PermanentFalError, match="malformed"):
        gateway(mock).submit(MODEL, ARGS, Recorder())


def test_submit_sets_the_submit_timeout() -> None:
    mock = Mock(submit_answer)
    gw = FalGateway(
        key="k", submit_timeout_s=3, poll_timeout_s=7, inner_transport=httpx.MockTransport(mock)
    )
    gw.submit(MODEL, ARGS, Recorder())
    assert mock.requests[0].extensions["timeout"]["read"] == 3


def test_hooks_are_unset_after_submit() -> None:
    gateway(Mock(submit_answer)).submit(MODEL, ARGS, Recorder())
    assert transport.HOOKS.get() is None


# --- status --------------------------------------------------------------------------------


def status_mock(status: int, payload: dict[str, Any]) -> Mock:
    return Mock(lambda r: httpx.Response(status, json=payload))


def test_status_in_queue() -> None:
    mock = status_mock(202, {"status": "IN_QUEUE", "queue_position": 3})
    status = gateway(mock).status(MODEL, RID)
    assert status == FalStatus("IN_QUEUE", queue_position=3)
    assert status.done is False
    assert status.failure() is None
    request = mock.requests[0]
    assert request.method == "GET"
    assert request.url.path == f"/openai/gpt-image-2/requests/{RID}/status"


def test_status_in_progress() -> None:
    mock = status_mock(202, {"status": "IN_PROGRESS", "logs": []})
    assert gateway(mock).status(MODEL, RID) == FalStatus("IN_PROGRESS")


def test_status_completed_ok() -> None:
    mock = status_mock(200, {"status": "COMPLETED", "logs": None, "metrics": {}})
    status = gateway(mock).status(MODEL, RID)
    assert status == FalStatus("COMPLETED")
    assert status.done is True
    assert status.failure() is None


def test_status_completed_with_error() -> None:
    payload = {
        "status": "COMPLETED",
        "logs": None,
        "metrics": {"inference_time": 1.2},
        "error": "Runner disconnected",
        "error_type": "runner_disconnected",
    }
    status = gateway(status_mock(200, payload)).status(MODEL, RID)
    assert status == FalStatus(
        "COMPLETED", error="Runner disconnected", error_type="runner_disconnected"
    )
    failure = status.failure()
    assert isinstance(failure, TransientFalError)
    assert failure.resubmit is True


def test_status_unknown_state_is_malformed() -> None:
    mock = status_mock(200, {"status": "EXPLODED", "logs": None})
    with pytest.raises(PermanentFalError, match="malformed"):
        gateway(mock).status(MODEL, RID)


def test_status_5xx_is_transient_and_not_retried() -> None:
    mock = Mock(lambda r: httpx.Response(503, json={"detail": "x", "error_type": "x"}), limit=1)
    with pytest.raises(TransientFalError):
        gateway(mock).status(MODEL, RID)
    assert len(mock.requests) == 1


def test_status_read_timeout_is_transient() -> None:
    mock = Mock(raising(httpx.ReadTimeout("slow")), limit=1)
    with pytest.raises(TransientFalError, match="status"):
        gateway(mock).status(MODEL, RID)
    assert len(mock.requests) == 1


def test_status_uses_the_poll_timeout() -> None:
    mock = status_mock(202, {"status": "IN_QUEUE", "queue_position": 0})
    gw = FalGateway(
        key="k", submit_timeout_s=3, poll_timeout_s=7, inner_transport=httpx.MockTransport(mock)
    )
    gw.status(MODEL, RID)
    assert mock.requests[0].extensions["timeout"]["read"] == 7


def test_status_result_cancel_never_call_hooks() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(202, json={"status": "CANCELLATION_REQUESTED"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "COMPLETED", "logs": None})
        return httpx.Response(200, json={"images": []})

    mock = Mock(answer)
    gw = gateway(mock)
    hooks = Recorder()
    # Even with hooks in scope (as during a submit), polls must not be counted as submits.
    token = transport.HOOKS.set(hooks)
    try:
        gw.status(MODEL, RID)
        gw.result(MODEL, RID)
        gw.cancel(MODEL, RID)
    finally:
        transport.HOOKS.reset(token)
    assert mock.methods() == ["GET", "GET", "PUT"]  # result() does not re-poll the status
    assert hooks.calls == []


def test_status_after_submit_does_not_call_hooks() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return submit_answer(request)
        return httpx.Response(202, json={"status": "IN_QUEUE", "queue_position": 1})

    mock = Mock(answer)
    gw = gateway(mock)
    hooks = Recorder()
    gw.submit(MODEL, ARGS, hooks)
    gw.status(MODEL, RID)
    gw.status(MODEL, RID)
    assert mock.methods() == ["POST", "GET", "GET"]
    assert hooks.calls == ["sending"]


# --- result and cancel ---------------------------------------------------------------------


def result_mock(status: int, content: bytes, headers: dict[str, str] | None = None) -> Mock:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "COMPLETED", "logs": None})
        return httpx.Response(status, content=content, headers=headers)

    return Mock(answer)


def test_result_returns_output() -> None:
    output = {"images": [{"url": "https://v3.fal.media/x.png", "width": 1024}], "seed": 1}
    mock = result_mock(200, json.dumps(output).encode(), {"content-type": "application/json"})
    assert gateway(mock).result(MODEL, RID) == output
    assert mock.requests[-1].url.path == f"/openai/gpt-image-2/requests/{RID}"


def test_result_content_policy_422_is_refusal() -> None:
    entry = {
        "loc": ["body", "prompt"],
        "msg": "The content could not be processed because it contained flagged material.",
        "type": "content_policy_violation",
        "url": "https://docs.fal.ai/errors#content_policy_violation",
        "ctx": {},
    }
    mock = result_mock(422, json.dumps({"detail": [entry]}).encode())
    with pytest.raises(PolicyRefusal) as info:
        gateway(mock).result(MODEL, RID)
    assert info.value.detail == entry
    assert info.value.http_status == 422
    assert isinstance(info.value.__cause__, Exception)  # chained, not swallowed


def test_result_truncated_json_is_malformed() -> None:
    mock = result_mock(200, b'{"images": [{"url": "https://v3.fal.media/x.p')
    with pytest.raises(PermanentFalError, match="malformed") as info:
        gateway(mock).result(MODEL, RID)
    assert type(info.value) is PermanentFalError
    assert len(mock.requests) == 1  # one result GET, no re-poll, no retries


def test_result_json_that_is_not_an_object() -> None:
    mock = result_mock(200, b"[1, 2, 3]")
    with pytest.raises(PermanentFalError, match="not an object"):
        gateway(mock).result(MODEL, RID)


def test_cancel_sends_one_put() -> None:
    mock = Mock(lambda r: httpx.Response(202, json={"status": "CANCELLATION_REQUESTED"}))
    gateway(mock).cancel(MODEL, RID)
    assert mock.methods() == ["PUT"]
    assert mock.requests[0].url.path == f"/openai/gpt-image-2/requests/{RID}/cancel"


def test_cancel_already_completed_400_is_permanent() -> None:
    mock = Mock(lambda r: httpx.Response(400, json={"status": "ALREADY_COMPLETED"}), limit=1)
    with pytest.raises(PermanentFalError):
        gateway(mock).cancel(MODEL, RID)
    assert len(mock.requests) == 1


def test_fal_clients_keep_no_cookies() -> None:
    """fal authenticates with a header: a Set-Cookie is neither parsed nor sent back."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(
                200,
                json={"status": "IN_PROGRESS", "logs": []},
                headers={"set-cookie": "__cf_bm=x; Path=/"},
            )
        return submit_answer(request)

    mock = Mock(answer)
    gw = gateway(mock)
    gw.status(MODEL, RID)
    gw.status(MODEL, RID)
    assert [r.headers.get("cookie") for r in mock.requests] == [None, None]
    assert all(r.headers["authorization"] == "Key k" for r in mock.requests)
    with pytest.raises(ValueError, match="no cookies"):
        transport.FilesClient().cookies = {"a": "b"}


# --- fal's backup domains ------------------------------------------------------------------


def backup_domains(mock: Mock) -> httpx.Client:
    return httpx.Client(transport=transport.BackupDomains(httpx.MockTransport(mock)))


def test_a_connect_error_on_fal_is_tried_once_on_its_backup_domain() -> None:
    """As fal-client's BackupDomainTransport: queue.fal.run unreachable -> queue.falrun.com,
    the connect timeout capped for both."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "queue.fal.run":
            raise httpx.ConnectError("unreachable", request=request)
        return httpx.Response(200, json={"status": "IN_PROGRESS"})

    mock = Mock(answer)
    with backup_domains(mock) as client:
        response = client.get(f"https://queue.fal.run/openai/gpt-image-2/requests/{RID}/status")
    assert response.json() == {"status": "IN_PROGRESS"}
    assert [r.url.host for r in mock.requests] == ["queue.fal.run", "queue.falrun.com"]
    assert mock.requests[1].headers["host"] == "queue.falrun.com"
    assert all(r.extensions["timeout"]["connect"] <= 5.0 for r in mock.requests)


def test_when_the_backup_domain_fails_too_the_primary_error_is_raised() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"unreachable {request.url.host}", request=request)

    mock = Mock(answer)
    with (
        backup_domains(mock) as client,
        pytest.raises(httpx.ConnectError, match=r"unreachable queue\.fal\.run$"),
    ):
        client.post("https://queue.fal.run/openai/gpt-image-2", json=ARGS)
    assert len(mock.requests) == 2


def test_hosts_without_a_backup_domain_are_tried_once() -> None:
    mock = Mock(raising(httpx.ConnectError("refused")))
    with backup_domains(mock) as client, pytest.raises(httpx.ConnectError):
        client.get(f"https://127.0.0.1:9/openai/gpt-image-2/requests/{RID}/status")
    assert len(mock.requests) == 1
    assert mock.requests[0].extensions["timeout"]["connect"] == 5.0  # httpx's default, kept


class _CountingServer:
    """A keep-alive HTTP/1.1 file host that counts the connections it accepts."""

    def __init__(self) -> None:
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                counter.connections += 1
                super().setup()

            def do_GET(self) -> None:
                self.send_response(206)
                self.send_header("Content-Length", "1")
                self.end_headers()
                self.wfile.write(b"x")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.connections = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/_files/r/0.png"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow  # waits out the keep-alive
@pytest.mark.parametrize(("keepalive_s", "connections"), [(60.0, 1), (0.3, 2)])
def test_an_idle_connection_is_kept_for_keepalive_s(keepalive_s: float, connections: int) -> None:
    """IMAGEGEN_FAL_KEEPALIVE_S reaches httpx: a connection idle for less than it is reused
    (httpx's own default, 5 s, reopened every connection between two waves)."""
    host = _CountingServer()
    gw = FalGateway(key="k", keepalive_s=keepalive_s)
    try:
        gw.check_images([{"url": host.url}])
        time.sleep(0.8)
        gw.check_images([{"url": host.url}])
    finally:
        gw.close()
        host.close()
    assert host.connections == connections
