"""Tests for the fal queue emulator (worker.fal.emulator), over real HTTPS."""

from __future__ import annotations

import json
import os
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from imagegen.worker.fal.emulator import FalEmulator

#: the emulator over HTTPS with waits for its latencies: left out of the quick run
pytestmark = [pytest.mark.timeout(30), pytest.mark.slow]

APP = "openai/gpt-image-2"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tls(emulator: FalEmulator) -> ssl.SSLContext:
    # httpx 0.28 deprecates verify=<path>; pass a context trusting the emulator's CA.
    return ssl.create_default_context(cafile=emulator.ca_file)


@pytest.fixture(scope="module")
def emu() -> Iterator[FalEmulator]:
    with FalEmulator(latency_s=0.2) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _fresh(emu: FalEmulator) -> None:
    emu.reset()
    emu.configure(latency_s=0.2, concurrency_limit=None, reject_over_limit=False)


@pytest.fixture
def client(emu: FalEmulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Key test"}
    with httpx.Client(verify=tls(emu), trust_env=False, headers=headers, timeout=5) as c:
        yield c


def submit(emu: FalEmulator, client: httpx.Client, prompt: str, **extra: Any) -> httpx.Response:
    return client.post(f"{emu.base_url}/{APP}", json={"prompt": prompt, **extra})


def wait_completed(client: httpx.Client, status_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = client.get(status_url, params={"logs": "false"})
        if r.status_code == 200:
            return dict(r.json())
        time.sleep(0.02)
    raise AssertionError("request never completed")


def test_submit_returns_urls_and_counts(emu: FalEmulator, client: httpx.Client) -> None:
    # a subpath other than the edit endpoint's: fal answers under owner/app all the same
    r = client.post(
        f"{emu.base_url}/{APP}/other?fal_webhook=https://x.test/h", json={"prompt": "a"}
    )
    assert r.status_code == 200
    body = r.json()
    rid = body["request_id"]
    base = f"https://{emu.host_port}/{APP}/requests/{rid}"  # owner/app only, no subpath
    assert body["status"] == "IN_QUEUE"
    assert body["response_url"] == base
    assert body["status_url"] == base + "/status"
    assert body["cancel_url"] == base + "/cancel"
    assert body["queue_position"] == 0
    assert r.headers["x-fal-request-id"] == rid
    stats = client.get(f"{emu.base_url}/_emulator/stats").json()
    assert stats["submissions_total"] == 1
    assert stats["submissions_by_prompt"] == {"a": 1}
    assert stats["requests"][rid]["prompt"] == "a"


def test_lifecycle_and_png_images(emu: FalEmulator, client: httpx.Client) -> None:
    size = {"width": 640, "height": 480}
    body = submit(emu, client, "two images", image_size=size, num_images=2).json()
    early = client.get(body["response_url"])
    assert early.status_code == 400
    assert early.json() == {"detail": "Request is still in progress"}
    first = client.get(body["status_url"], params={"logs": "1"})
    assert first.status_code == 202
    assert first.json()["status"] == "IN_PROGRESS"
    assert isinstance(first.json()["logs"], list)
    assert client.get(body["status_url"], params={"logs": "0"}).json()["logs"] is None
    done = wait_completed(client, body["status_url"])
    assert done["status"] == "COMPLETED" and "error" not in done
    assert done["metrics"]["inference_time"] == pytest.approx(0.2, abs=0.05)
    output = client.get(body["response_url"]).json()
    assert len(output["images"]) == 2
    for image in output["images"]:
        assert (image["width"], image["height"]) == (640, 480)
        png = httpx.get(image["url"], verify=tls(emu), trust_env=False)
        assert png.headers["content-type"] == "image/png"
        assert png.content[:8] == PNG_SIGNATURE
        assert png.content[12:16] == b"IHDR"
        assert struct.unpack(">II", png.content[16:24]) == (640, 480)
        assert len(png.content) == image["file_size"]
    assert emu.stats()["images_served"] == 2
    missing = client.get(f"{emu.base_url}/{APP}/requests/nope/status")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Request not found"}


def test_cancel_codes(emu: FalEmulator, client: httpx.Client) -> None:
    emu.configure(concurrency_limit=1)
    running = submit(emu, client, "long [[fal:ok+latency:5]]").json()
    queued = submit(emu, client, "long [[fal:ok+latency:5]]").json()
    assert client.get(queued["status_url"]).json() == {"status": "IN_QUEUE", "queue_position": 0}
    for handle in (queued, running):
        r = client.put(handle["cancel_url"])
        assert (r.status_code, r.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        status = client.get(handle["status_url"])
        assert status.status_code == 200
        assert status.json()["error_type"] == "client_cancelled"
        result = client.get(handle["response_url"])
        assert (result.status_code, result.json()) == (400, {"detail": "Request was cancelled"})
    again = client.put(running["cancel_url"])
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
    unknown = client.put(f"{emu.base_url}/{APP}/requests/nope/cancel")
    assert (unknown.status_code, unknown.json()) == (404, {"status": "NOT_FOUND"})
    assert emu.stats()["requests"][running["request_id"]]["state"] == "CANCELLED"


def test_concurrency_limit(emu: FalEmulator, client: httpx.Client) -> None:
    emu.configure(latency_s=0.3, concurrency_limit=2)
    handles = [submit(emu, client, f"c{i}").json() for i in range(5)]
    assert [h["queue_position"] for h in handles] == [0, 0, 0, 1, 2]
    third = client.get(handles[4]["status_url"])
    assert third.status_code == 202
    assert third.json() == {"status": "IN_QUEUE", "queue_position": 2}
    assert emu.stats()["in_progress"] == 2
    for handle in handles:
        wait_completed(client, handle["status_url"])
    assert emu.stats()["in_progress_peak"] == 2
    assert emu.stats()["active_peak"] == 5
    assert emu.stats()["rejected_429_total"] == 0


def test_cancelled_running_request_frees_its_place(emu: FalEmulator, client: httpx.Client) -> None:
    """The queued request starts when the running one is cancelled, and completes one
    latency later (the cancelled request's own end time is not replayed as a completion)."""
    emu.configure(latency_s=0.4, concurrency_limit=1)
    first = submit(emu, client, "first [[fal:ok+latency:5]]").json()
    second = submit(emu, client, "second").json()
    assert client.get(second["status_url"]).json()["status"] == "IN_QUEUE"
    assert client.put(first["cancel_url"]).status_code == 202
    started = time.monotonic()
    assert client.get(second["status_url"]).json()["status"] == "IN_PROGRESS"
    done = wait_completed(client, second["status_url"])
    assert done["status"] == "COMPLETED"
    assert 0.3 < time.monotonic() - started < 2.0
    summary = client.get(f"{emu.base_url}/_emulator/stats", params={"summary": "1"}).json()
    assert "requests" not in summary and "submissions_by_prompt" not in summary
    assert (summary["queued"], summary["in_progress"], summary["in_progress_peak"]) == (0, 0, 1)
    assert summary["submissions_total"] == 2


def test_strict_limit_rejects_instead_of_queueing(emu: FalEmulator, client: httpx.Client) -> None:
    emu.configure(latency_s=0.3, concurrency_limit=2, reject_over_limit=True)
    first, second = (submit(emu, client, f"s{i}") for i in range(2))
    assert (first.status_code, second.status_code) == (200, 200)
    over = submit(emu, client, "s2")
    assert over.status_code == 429
    assert over.headers["retry-after"] == "1"
    assert over.json() == {"detail": "Concurrent request limit reached"}
    stats = emu.stats()
    assert stats["submissions_total"] == 3 and stats["submissions_by_prompt"]["s2"] == 1
    assert len(stats["requests"]) == 2
    assert (stats["rejected_429_total"], stats["active_peak"]) == (1, 2)
    wait_completed(client, first.json()["status_url"])
    assert submit(emu, client, "s3").status_code == 200
    assert emu.stats()["active_peak"] == 2
    emu.reset()
    assert (emu.stats()["rejected_429_total"], emu.stats()["active_peak"]) == (0, 0)


def test_strict_limit_is_atomic_under_parallel_submits(
    emu: FalEmulator, client: httpx.Client
) -> None:
    emu.configure(latency_s=1.0, concurrency_limit=2, reject_over_limit=True)
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda i: submit(emu, client, f"p{i}").status_code, range(8)))
    assert codes == [200, 200] + [429] * 6
    stats = emu.stats()
    assert (stats["submissions_total"], stats["rejected_429_total"]) == (8, 6)
    assert stats["active_peak"] == 2 and stats["in_progress"] == 2


def test_missing_image_is_404(emu: FalEmulator, client: httpx.Client) -> None:
    handle = submit(emu, client, "[[fal:url-404]]").json()
    wait_completed(client, handle["status_url"])
    url = client.get(handle["response_url"]).json()["images"][0]["url"]
    assert url.endswith(f"/_files/{handle['request_id']}/missing.png")
    assert client.get(url).status_code == 404
    assert client.get(f"{emu.base_url}/_files/nope/0.png").status_code == 404
    assert emu.stats()["images_served"] == 0


def test_auth(emu: FalEmulator) -> None:
    with httpx.Client(verify=tls(emu), trust_env=False) as anonymous:
        r = anonymous.post(f"{emu.base_url}/{APP}", json={"prompt": "x"})
    assert (r.status_code, r.json()) == (401, {"detail": "Missing authorization header"})
    with FalEmulator(expected_key="right") as strict, httpx.Client(verify=tls(strict)) as c:
        url = f"{strict.base_url}/{APP}"
        bad = c.post(url, json={"prompt": "x"}, headers={"Authorization": "Key wrong"})
        good = c.post(url, json={"prompt": "x"}, headers={"Authorization": "Key right"})
    assert (bad.status_code, bad.json()) == (401, {"detail": "Invalid API key"})
    assert good.status_code == 200


def test_429_then_ok_and_counts(emu: FalEmulator, client: httpx.Client) -> None:
    prompt = "cat [[fal:429:3,ok]]"
    first = submit(emu, client, prompt)
    assert first.status_code == 429
    assert first.headers["retry-after"] == "3"
    assert "x-fal-request-id" not in first.headers
    assert submit(emu, client, prompt).status_code == 200
    assert submit(emu, client, prompt).status_code == 200
    assert emu.stats()["submissions_by_prompt"][prompt] == 3
    assert emu.stats()["rejected_429_total"] == 1


def test_submit_time_error_shapes(emu: FalEmulator, client: httpx.Client) -> None:
    refused = submit(emu, client, "[[fal:refuse:celebrity_likeness]]")
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert detail["error"] == "content_policy_violation"
    assert detail["category"] == "celebrity_likeness"
    assert "public figure" in detail["message"]
    r422 = submit(emu, client, "[[fal:refuse422:my_cat]]")
    assert r422.status_code == 422 and r422.headers["x-fal-retryable"] == "false"
    assert r422.json()["detail"][0]["ctx"] == {"category": "my_cat"}
    assert "(my_cat)" in r422.json()["detail"][0]["msg"]
    nginx = submit(emu, client, "[[fal:502]]")
    assert nginx.status_code == 502 and "nginx" in nginx.text
    assert "x-fal-request-id" not in nginx.headers
    json503 = submit(emu, client, "[[fal:503json]]")
    assert json503.headers["x-fal-error-type"] == "runner_scheduling_failure"
    assert "x-fal-request-id" in json503.headers
    with pytest.raises(json.JSONDecodeError):
        submit(emu, client, "[[fal:malformed]]").json()
    unknown = submit(emu, client, "[[fal:explode]]")
    assert unknown.json() == {"detail": "emulator: unknown directive step 'explode'"}
    assert emu.stats()["requests"] == {}


def test_late_refuse_and_header_refuse(emu: FalEmulator, client: httpx.Client) -> None:
    late = submit(emu, client, "[[fal:late-refuse:trademark_ip]]").json()
    status = wait_completed(client, late["status_url"])
    assert "error" not in status
    result = client.get(late["response_url"])
    assert result.status_code == 422
    assert result.headers["x-fal-retryable"] == "false"
    assert result.json()["detail"][0]["type"] == "content_policy_violation"
    assert result.json()["detail"][0]["ctx"]["category"] == "trademark_ip"
    header = submit(emu, client, "[[fal:header-refuse:self_harm_instructions]]").json()
    wait_completed(client, header["status_url"])
    result = client.get(header["response_url"])
    assert result.status_code == 500
    assert result.headers["x-fal-error-type"] == "content_policy_violation"
    assert result.headers["x-fal-retryable"] == "false"


def test_drop_and_slow(emu: FalEmulator, client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        submit(emu, client, "[[fal:drop]]")
    with pytest.raises(httpx.ReadTimeout):
        client.post(f"{emu.base_url}/{APP}", json={"prompt": "[[fal:slow:1]]"}, timeout=0.3)
    stats = emu.stats()
    assert stats["submissions_total"] == 2
    assert [r["prompt"] for r in stats["requests"].values()] == ["[[fal:slow:1]]"]


def test_round_trip_delays_every_fal_answer_but_not_the_control_calls() -> None:
    """--round-trip: fal over a network (tens to hundreds of ms a call), not on localhost."""
    headers = {"Authorization": "Key test"}
    with (
        FalEmulator(latency_s=0, round_trip_s=0.3) as slow,
        httpx.Client(verify=tls(slow), trust_env=False, headers=headers, timeout=5) as c,
    ):
        c.get(f"{slow.base_url}/_emulator/stats")  # the connection, out of the timings
        started = time.monotonic()
        accepted = submit(slow, c, "a slow network")
        submitted = time.monotonic()
        c.get(f"{slow.base_url}/_emulator/stats", params={"summary": "1"})
        probed = time.monotonic()
        done = wait_completed(c, accepted.json()["status_url"])
        polled = time.monotonic()
    assert accepted.status_code == 200 and done["status"] == "COMPLETED"
    assert submitted - started >= 0.3
    assert probed - submitted < 0.2
    assert polled - probed >= 0.3


def test_control_endpoints(emu: FalEmulator, client: httpx.Client) -> None:
    submit(emu, client, "x")
    config = client.post(f"{emu.base_url}/_emulator/config", json={"concurrency_limit": 3})
    assert config.json() == {"latency_s": 0.2, "concurrency_limit": 3, "reject_over_limit": False}
    strict = client.post(f"{emu.base_url}/_emulator/config", json={"reject_over_limit": True})
    assert strict.json() == {"latency_s": 0.2, "concurrency_limit": 3, "reject_over_limit": True}
    bad = client.post(f"{emu.base_url}/_emulator/config", json={"reject_over_limit": "yes"})
    assert bad.status_code == 400
    assert client.post(f"{emu.base_url}/_emulator/reset").status_code == 200
    assert emu.stats()["submissions_total"] == 0


def test_stop_releases_hanging_handler() -> None:
    emulator = FalEmulator().start()
    errors: list[BaseException] = []

    def hang() -> None:
        with httpx.Client(verify=tls(emulator), trust_env=False, timeout=20) as c:
            try:
                c.post(
                    emulator.base_url + "/a/b",
                    json={"prompt": "[[fal:hang]]"},
                    headers={"Authorization": "Key k"},
                )
            except httpx.HTTPError as error:
                errors.append(error)

    thread = threading.Thread(target=hang)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    emulator.stop()
    thread.join(5)
    assert time.monotonic() - started < 2
    assert len(errors) == 1


@pytest.mark.slow
def test_real_fal_client_end_to_end(emu: FalEmulator) -> None:
    code = (
        "import json, fal_client\n"
        "c = fal_client.SyncClient(key='test')\n"
        "h = c.submit('openai/gpt-image-2', {'prompt': '[[fal:503,429,ok]] a cat',"
        " 'image_size': 'square', 'quality': 'low', 'num_images': 1, 'output_format': 'png'})\n"
        "print(json.dumps(h.get()))\n"
    )
    env = {**os.environ, **emu.env(), "FAL_KEY": "test", "NO_PROXY": "127.0.0.1,localhost"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=25
    )
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(output["images"]) == 1
    assert output["images"][0]["width"] == 512
    assert emu.stats()["submissions_by_prompt"]["[[fal:503,429,ok]] a cat"] == 3


def test_stats_say_how_late_a_status_poll_heard_a_completion(
    emu: FalEmulator, client: httpx.Client
) -> None:
    """The benchmark's "fal done -> a poll heard it": from the completion (latency 0.2 s) to
    the first poll that answered COMPLETED; later polls do not move it."""
    body = submit(emu, client, "heard").json()
    time.sleep(0.2 + 0.3)
    for _ in range(2):
        assert client.get(body["status_url"]).status_code == 200
        time.sleep(0.2)
    request = client.get(f"{emu.base_url}/_emulator/stats").json()["requests"][body["request_id"]]
    assert request["status_polls"] == 2
    assert 0.25 <= request["heard_after_s"] < 0.45, request
    pending = submit(emu, client, "not yet").json()
    assert client.get(pending["status_url"]).status_code == 202
    stats = client.get(f"{emu.base_url}/_emulator/stats").json()
    assert stats["requests"][pending["request_id"]]["heard_after_s"] is None
