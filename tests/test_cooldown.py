"""Repeat-offender cool-downs: real worker, Postgres, Redis and the emulator refusing."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from imagegen.worker.errors import CoolingDown
from tests.conftest import API_KEY, Stack, unique
from tests.test_cli_comforts import imagegen

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
LIMITS = {"IMAGEGEN_COOLDOWN_REFUSALS": "2", "IMAGEGEN_COOLDOWN_MIN": "30"}


def _refused_twice(stack: Stack, end_user: str) -> None:
    for _ in range(2):
        prompt = unique("[[fal:refuse:celebrity_likeness]] a famous actor")
        job = stack.wait_terminal(stack.enqueue(prompt, end_user=end_user))
        assert job["status"] == "refused", job


def _refused_at_enqueue(stack: Stack, end_user: str) -> CoolingDown:
    deadline = time.monotonic() + 20  # the cool-down task runs just after the refusal
    while True:
        try:
            stack.enqueue(unique("a harmless kite"), end_user=end_user)
        except CoolingDown as exc:
            return exc
        assert time.monotonic() < deadline, "no cool-down started"
        time.sleep(0.2)


def test_two_refusals_cool_the_end_user_down_until_lifted(stack: Stack) -> None:
    stack.env.update(LIMITS)
    stack.start_worker()
    _refused_twice(stack, "u-1")
    stopped = _refused_at_enqueue(stack, "u-1")
    assert "end user 'u-1' is cooling down until" in str(stopped)
    assert 1_700 < stopped.retry_after_s <= 1_801
    other = stack.wait_terminal(stack.enqueue(unique("a kite"), end_user="u-2"))
    assert other["status"] == "succeeded"  # another user of the tenant is not slowed
    listed = imagegen(stack, "cooldown", "list")
    [entry] = json.loads(listed.stdout)
    assert (entry["tenant"], entry["end_user"], entry["refusals"]) == ("default", "u-1", 2)
    [default] = json.loads(imagegen(stack, "stats", "--by", "tenant").stdout)
    assert (default["cooldowns_started"], default["cooling_down"]) == (1, 1)
    base = stack.start_api()
    answer = httpx.post(
        f"{base}/jobs",
        json={"prompt": unique("a kite"), "end_user": "u-1"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 429 and answer.headers["X-Imagegen-Quota"] == "cooldown"
    assert int(answer.headers["Retry-After"]) > 1_700 and "cooling down" in answer.text
    lifted = imagegen(stack, "cooldown", "lift", "default", "--end-user", "u-1")
    assert lifted.returncode == 0 and lifted.stdout.strip() == "1", lifted.stderr
    again = stack.wait_terminal(stack.enqueue(unique("a kite"), end_user="u-1"))
    assert again["status"] == "succeeded"
    [default] = json.loads(imagegen(stack, "stats", "--by", "tenant").stdout)
    assert (default["cooldowns_started"], default["cooling_down"]) == (1, 0)
    assert "cooldown.started" in stack.logs()
