"""The moderation pre-filter in the pipeline: refused before any (billable) submit to fal."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import ROOT, Stack, unique

pytestmark = pytest.mark.timeout(90)
CATEGORIES = ("sexual", "sexual/minors", "hate", "self-harm/instructions", "violence")


class _OpenAIModeration(BaseHTTPRequestHandler):
    """Answers POST /v1/moderations in OpenAI's documented shape; flags prompts with FLAG."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        flagged = "FLAG" in body["input"]
        categories = {name: False for name in CATEGORIES}
        categories["sexual/minors"] = categories["sexual"] = flagged
        answer = {
            "id": "modr-1",
            "model": body["model"],
            "results": [
                {
                    "flagged": flagged,
                    "categories": categories,
                    "category_scores": {n: 0.9 if categories[n] else 0.01 for n in CATEGORIES},
                    "category_applied_input_types": {n: ["text"] for n in CATEGORIES},
                }
            ],
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def openai_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIModeration)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _submissions(stack: Stack, prompt: str) -> int:
    return int(stack.emulator.stats()["submissions_by_prompt"].get(prompt, 0))


@pytest.mark.slow
def test_rules_refuse_before_fal_and_stats_tell_the_sources_apart(stack: Stack) -> None:
    stack.start_worker(extra_env={"IMAGEGEN_MODERATION": "rules"})
    celebrity = unique("a photo of T a y l o r  S w i f t on stage")
    benign = unique("a cartoon mouse at a kid's birthday party")
    fal_refused = unique("[[fal:refuse:hate_protected_group]] a poster")
    ids = [stack.enqueue(p) for p in (celebrity, benign, fal_refused)]
    pre, ok, by_fal = (stack.wait_terminal(i) for i in ids)
    assert pre["status"] == "refused", pre
    assert pre["refusal_category"] == "celebrity_likeness"
    assert pre["refusal_source"] == "prefilter" and pre["refusal_message"]
    assert pre["attempts"] == 0 and _submissions(stack, celebrity) == 0
    assert ok["status"] == "succeeded" and _submissions(stack, benign) == 1
    assert by_fal["status"] == "refused" and by_fal["refusal_source"] == "fal"
    env = {**stack.env, "IMAGEGEN_MODERATION": "rules"}
    stats = json.loads(
        subprocess.run(
            [sys.executable, "-m", "imagegen.worker.cli", "stats", "--json"],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            check=True,
        ).stdout
    )
    assert stats["by_refusal_source"]["prefilter"] == {"celebrity_likeness": 1}
    assert stats["by_refusal_source"]["fal"] == {"hate_protected_group": 1}


@pytest.mark.slow
def test_openai_moderation_refuses_and_maps_the_category(stack: Stack, openai_url: str) -> None:
    stack.start_worker(
        extra_env={"IMAGEGEN_MODERATION": "openai", "IMAGEGEN_OPENAI_BASE_URL": openai_url}
    )
    flagged, fine = unique("FLAG something"), unique("a quiet harbour")
    refused, ok = (stack.wait_terminal(stack.enqueue(p)) for p in (flagged, fine))
    assert refused["status"] == "refused" and refused["refusal_source"] == "prefilter"
    assert refused["refusal_category"] == "sexual_minors"
    assert _submissions(stack, flagged) == 0
    assert ok["status"] == "succeeded" and _submissions(stack, fine) == 1


@pytest.mark.slow
def test_moderation_down_fails_open_by_default_and_closed_when_asked(stack: Stack) -> None:
    down = f"http://127.0.0.1:{_closed_port()}/v1"
    env = {"IMAGEGEN_MODERATION": "openai", "IMAGEGEN_OPENAI_BASE_URL": down}
    stack.start_worker(extra_env=env)
    open_prompt = unique("a windmill")
    job = stack.wait_terminal(stack.enqueue(open_prompt))
    assert job["status"] == "succeeded" and _submissions(stack, open_prompt) == 1
    assert "moderation.unavailable" in stack.logs()
    stack.stop()
    stack.workers.clear()
    stack.start_worker(extra_env={**env, "IMAGEGEN_MODERATION_FAIL_CLOSED": "true"})
    closed_prompt = unique("a watermill")
    job = stack.wait_terminal(stack.enqueue(closed_prompt))
    assert job["status"] == "failed", job
    assert "moderation service is unavailable" in job["error"]
    assert job["attempts"] == 0 and _submissions(stack, closed_prompt) == 0


@pytest.mark.slow
def test_imagegen_moderate_prints_the_verdict_without_enqueueing() -> None:
    # Postgres and Redis unreachable: a command that wrote or published anything would fail
    nowhere = {"DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/x"}
    nowhere["REDIS_URL"] = f"redis://127.0.0.1:{_closed_port()}/0"
    env = {**os.environ, **nowhere, "IMAGEGEN_MODERATION": "rules"}

    def moderate(prompt: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "imagegen.worker.cli", "moderate", prompt, "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=True,
        )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    refused = moderate("Mickey Mouse waving")
    assert refused["verdict"] == "refuse" and refused["category"] == "trademark_ip"
    assert refused["source"] == "rules"
    assert moderate("an original mouse character, not Mickey Mouse")["verdict"] == "pass"
    assert moderate("a cartoon mouse")["verdict"] == "pass"
