"""The anthropic checker: Claude through the official SDK, against a local Messages API.

The SDK sends its requests with its own HTTP client, so a respx-style mock cannot see
them: a ``ThreadingHTTPServer`` answers ``POST /v1/messages`` in the documented shape at
``IMAGEGEN_ANTHROPIC_BASE_URL`` instead. The last test runs it under a real worker.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from imagegen.worker.moderation import (
    CATEGORIES,
    TRADEMARK_IP,
    AnthropicModerator,
    ModerationConfigError,
    ModerationUnavailable,
    Verdict,
    build_chain,
    parse_spec,
)
from imagegen.worker.moderation.anthropic_api import (
    DEFAULT_MODEL,
    NO_CATEGORY,
    PROMPT_FILE,
    TOOL_NAME,
    SystemPrompt,
)
from tests.conftest import Stack, unique

API_KEY = "sk-ant-test-DO-NOT-LEAK-4242"
SECRET_PROMPT = "secret prompt text"
#: A prompt holding ``[[claude:<category>]]`` is classified so by the stub (pipeline test).
MARKER = re.compile(r"\[\[claude:(\w+)\]\]")


@dataclass
class Behaviour:
    """What the stub answers next: a category, or an error, a delay, a raw body."""

    category: str = NO_CATEGORY
    status: int = 200
    delay_s: float = 0.0
    raw: bytes | None = None
    #: replaces the whole answer when set (a refusal, a reply without the tool call)
    answer: dict[str, Any] | None = None
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)


def message(content: list[dict[str, Any]], stop_reason: str = "tool_use") -> dict[str, Any]:
    """A Messages API answer in the documented shape."""
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": DEFAULT_MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 420, "output_tokens": 18},
    }


def tool_call(tool_input: Any, name: str = TOOL_NAME) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_test", "name": name, "input": tool_input}


def _error_body(status: int) -> bytes:
    kind = {529: "overloaded_error", 429: "rate_limit_error", 401: "authentication_error"}
    error = {"type": kind.get(status, "api_error"), "message": "nope"}
    return json.dumps({"type": "error", "error": error}).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        behaviour = self.server.behaviour
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        headers = {name.lower(): value for name, value in self.headers.items()}
        behaviour.requests.append((self.path, headers, body))
        time.sleep(behaviour.delay_s)
        category = behaviour.category
        found = MARKER.search(str(body["messages"][0]["content"]))
        if found:
            category = found.group(1)
        if behaviour.raw is not None:
            payload = behaviour.raw
        elif behaviour.status != 200:
            payload = _error_body(behaviour.status)
        else:
            answer = behaviour.answer or message([tool_call({"category": category})])
            payload = json.dumps(answer).encode()
        try:
            self.send_response(behaviour.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour = Behaviour()


@pytest.fixture(scope="module")
def claude_server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def behaviour(claude_server: _Server) -> Behaviour:
    claude_server.behaviour = Behaviour()
    return claude_server.behaviour


@pytest.fixture
def base_url(claude_server: _Server) -> str:
    return f"http://127.0.0.1:{claude_server.server_address[1]}"


@pytest.fixture
def moderator(base_url: str) -> Iterator[AnthropicModerator]:
    checker = AnthropicModerator(base_url=base_url, api_key=API_KEY, timeout_s=2.0)
    yield checker
    checker.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_nothing_leaks(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), str(exc.__cause__), str(exc.__context__)):
        assert API_KEY not in text and SECRET_PROMPT not in text
    assert exc.__cause__ is None


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("category", CATEGORIES)
def test_a_category_refuses_and_the_request_is_the_documented_one(
    moderator: AnthropicModerator, behaviour: Behaviour, category: str
) -> None:
    behaviour.category = category
    assert moderator.check("some prompt") == Verdict.refusal(category, "anthropic")
    path, headers, body = behaviour.requests[-1]
    assert path == "/v1/messages"
    # SDK 2.x sends the key as a bearer token (earlier SDKs used x-api-key)
    assert headers["authorization"] == f"Bearer {API_KEY}" and "x-api-key" not in headers
    assert headers["anthropic-version"]
    assert body["model"] == DEFAULT_MODEL == "claude-haiku-5-5"
    assert body["system"] == PROMPT_FILE.read_text(encoding="utf-8").strip()
    assert body["messages"] == [{"role": "user", "content": "some prompt"}]
    (tool,) = body["tools"]
    assert tool["name"] == TOOL_NAME and tool["strict"] is True
    assert tool["input_schema"]["required"] == ["category"]
    enum = tool["input_schema"]["properties"]["category"]["enum"]
    assert enum == [*CATEGORIES, "none"]
    assert body["tool_choice"] == {
        "type": "tool",
        "name": TOOL_NAME,
        "disable_parallel_tool_use": True,
    }
    assert body["thinking"] == {"type": "disabled"}
    assert 0 < body["max_tokens"] <= 256


def test_none_passes(moderator: AnthropicModerator, behaviour: Behaviour) -> None:
    assert moderator.check("a quiet harbour at dawn") == Verdict.passed("anthropic")
    assert len(behaviour.requests) == 1


def test_a_refusal_stop_reason_is_unavailable_not_a_pass(
    moderator: AnthropicModerator, behaviour: Behaviour
) -> None:
    behaviour.answer = message([], stop_reason="refusal")
    with pytest.raises(ModerationUnavailable, match="declined to classify") as caught:
        moderator.check(SECRET_PROMPT)
    assert caught.value.source == "anthropic"
    assert_nothing_leaks(caught.value)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (500, "HTTP 500: server error"),
        (503, "HTTP 503: server error"),
        (529, "HTTP 529: Anthropic's API is overloaded"),
        (429, "HTTP 429: rate limited"),
        (401, "the API key was rejected; check ANTHROPIC_API_KEY"),
        (403, "the API key was rejected"),
        (404, "check the base URL and model"),
        (400, "the request was rejected"),
    ],
)
def test_api_errors_are_unavailable_and_not_retried(
    moderator: AnthropicModerator, behaviour: Behaviour, status: int, reason: str
) -> None:
    behaviour.status = status
    with pytest.raises(ModerationUnavailable, match=re.escape(reason)) as caught:
        moderator.check(SECRET_PROMPT)
    assert_nothing_leaks(caught.value)
    assert len(behaviour.requests) == 1  # the SDK's own retries are off


NO_CATEGORY_NAMED = "names no known category"
NO_SINGLE_CALL = "no single classify_prompt call"


@pytest.mark.parametrize(
    ("answer", "raw", "reason"),
    [
        (message([tool_call({"category": "graphic_gore"})]), None, NO_CATEGORY_NAMED),
        (message([tool_call({"category": "Trademark_IP"})]), None, NO_CATEGORY_NAMED),
        (message([tool_call({"label": "trademark_ip"})]), None, NO_CATEGORY_NAMED),
        (message([tool_call({"category": None})]), None, NO_CATEGORY_NAMED),
        (message([tool_call("trademark_ip")]), None, NO_CATEGORY_NAMED),
        (message([tool_call({"category": "none"}, name="other_tool")]), None, NO_SINGLE_CALL),
        (message([tool_call({"category": "none"})] * 2), None, NO_SINGLE_CALL),
        (message([{"type": "text", "text": "Fine."}], "end_turn"), None, NO_SINGLE_CALL),
        (message([], stop_reason="max_tokens"), None, r"stop_reason max_tokens"),
        ({"type": "message"}, None, NO_SINGLE_CALL),
        (None, b"<html>not json</html>", r"unexpected answer \(JSONDecodeError\)"),
        (None, b'{"content": "trademark_ip"}', NO_SINGLE_CALL),
    ],
)
def test_a_malformed_answer_is_unavailable(
    moderator: AnthropicModerator,
    behaviour: Behaviour,
    answer: dict[str, Any] | None,
    raw: bytes | None,
    reason: str,
) -> None:
    behaviour.answer, behaviour.raw = answer, raw
    with pytest.raises(ModerationUnavailable, match=reason) as caught:
        moderator.check(SECRET_PROMPT)
    assert caught.value.source == "anthropic"
    assert_nothing_leaks(caught.value)


def test_a_prompt_that_is_not_utf8_is_unavailable_and_not_sent(
    moderator: AnthropicModerator, behaviour: Behaviour
) -> None:
    with pytest.raises(ModerationUnavailable, match="not valid UTF-8") as caught:
        moderator.check("caf\udce9 " + SECRET_PROMPT)
    assert behaviour.requests == []
    assert_nothing_leaks(caught.value)


def test_a_slow_answer_is_unavailable_within_the_timeout(
    base_url: str, behaviour: Behaviour
) -> None:
    behaviour.delay_s = 3.0
    checker = AnthropicModerator(base_url=base_url, api_key=API_KEY, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ModerationUnavailable, match=r"no answer within 0\.3s") as caught:
        checker.check(SECRET_PROMPT)
    checker.close()
    assert time.monotonic() - started < 2.5  # one attempt, not three plus backoff
    assert len(behaviour.requests) == 1
    assert_nothing_leaks(caught.value)


def test_a_server_down_is_unavailable() -> None:
    checker = AnthropicModerator(base_url=closed_port_url(), api_key=API_KEY, timeout_s=1.0)
    with pytest.raises(ModerationUnavailable, match=r"unreachable \(ConnectError\)") as caught:
        checker.check(SECRET_PROMPT)
    checker.close()
    assert_nothing_leaks(caught.value)


def test_the_key_is_never_logged_even_at_debug(
    base_url: str,
    behaviour: Behaviour,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK's and its HTTP client's debug lines too
    checker = AnthropicModerator(base_url=base_url, api_key=API_KEY, timeout_s=2.0)
    behaviour.category = TRADEMARK_IP
    checker.check("a prompt")
    behaviour.status = 500
    with pytest.raises(ModerationUnavailable):
        checker.check("a prompt")
    checker.close()
    logged = capsys.readouterr()
    assert "/v1/messages" in caplog.text  # the SDK did log its requests
    for text in (caplog.text, logged.out, logged.err):
        assert API_KEY not in text
    assert behaviour.requests[0][1]["authorization"] == f"Bearer {API_KEY}"


# --------------------------------------------------------------------------- prompt, config


def test_the_system_prompt_is_versioned_and_names_every_category() -> None:
    prompt = SystemPrompt.load()
    assert prompt.version == PROMPT_FILE.stem == "anthropic_v1"
    assert re.fullmatch(r"[0-9a-f]{12}", prompt.sha256)
    for name in [*CATEGORIES, NO_CATEGORY, TOOL_NAME]:
        assert f"`{name}`" in prompt.text


def test_an_unreadable_or_empty_prompt_file_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ModerationConfigError, match="cannot be read"):
        SystemPrompt.load(tmp_path / "missing.md")
    (tmp_path / "empty.md").write_text("  \n")
    with pytest.raises(ModerationConfigError, match="is empty"):
        SystemPrompt.load(tmp_path / "empty.md")


def test_anthropic_joins_the_chain_in_any_order_and_needs_a_key() -> None:
    assert parse_spec("rules, Anthropic") == ("rules", "anthropic")
    assert parse_spec("anthropic,openai,rules") == ("anthropic", "openai", "rules")
    with pytest.raises(ModerationConfigError, match="ANTHROPIC_API_KEY"):
        build_chain("rules,anthropic", anthropic_api_key=None)
    with pytest.raises(ModerationConfigError, match="timeout must be positive"):
        build_chain("anthropic", anthropic_api_key=API_KEY, timeout_s=0)


def test_settings_read_the_anthropic_block() -> None:
    from imagegen.worker.settings import Settings

    settings = Settings(
        IMAGEGEN_MODERATION="anthropic, rules",
        ANTHROPIC_API_KEY=API_KEY,
        IMAGEGEN_ANTHROPIC_BASE_URL="http://127.0.0.1:1",
        IMAGEGEN_ANTHROPIC_MODERATION_MODEL="claude-haiku-4-5",
    )
    assert settings.moderation == "anthropic,rules"
    assert settings.anthropic_moderation_model == "claude-haiku-4-5"
    assert API_KEY not in repr(settings)
    assert Settings().anthropic_base_url == "https://api.anthropic.com"


# --------------------------------------------------------------------------- in the chain


def test_rules_refuse_first_and_a_pass_names_both(base_url: str, behaviour: Behaviour) -> None:
    chain = build_chain("rules,anthropic", anthropic_base_url=base_url, anthropic_api_key=API_KEY)
    assert chain.check("Pikachu").source == "rules"
    assert behaviour.requests == []  # Claude never asked
    behaviour.category = "celebrity_likeness"
    verdict = chain.check("a plain prompt")
    assert (verdict.category, verdict.source) == ("celebrity_likeness", "anthropic")
    behaviour.category = NO_CATEGORY
    assert chain.check("a plain prompt") == Verdict.passed("rules,anthropic")
    chain.close()


@pytest.mark.parametrize("status", [500, 529])
def test_the_chain_fails_open_with_anthropic_skipped(
    base_url: str, behaviour: Behaviour, status: int
) -> None:
    behaviour.status = status
    seen: list[str] = []
    chain = build_chain(
        "anthropic,rules",
        anthropic_base_url=base_url,
        anthropic_api_key=API_KEY,
        on_unavailable=seen.append,
    )
    assert chain.check("a plain prompt") == Verdict.passed("rules", skipped=("anthropic",))
    assert chain.check("Pikachu").category == TRADEMARK_IP
    assert seen == ["anthropic", "anthropic"] and chain.unavailable_count == 2
    chain.close()


def test_the_chain_fails_closed_on_a_claude_refusal(base_url: str, behaviour: Behaviour) -> None:
    behaviour.answer = message([], stop_reason="refusal")
    chain = build_chain(
        "rules,anthropic",
        anthropic_base_url=base_url,
        anthropic_api_key=API_KEY,
        fail_closed=True,
    )
    with pytest.raises(ModerationUnavailable, match="declined to classify"):
        chain.check("a plain prompt")
    assert chain.check("Pikachu").category == TRADEMARK_IP  # rules refuse before Claude
    chain.close()


# --------------------------------------------------------------------------- in a worker


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_worker_refuses_on_claudes_word_before_fal(
    stack: Stack, base_url: str, behaviour: Behaviour
) -> None:
    stack.start_worker(
        extra_env={
            "IMAGEGEN_MODERATION": "rules,anthropic",
            "IMAGEGEN_ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": API_KEY,
            "IMAGEGEN_ANTHROPIC_MODERATION_MODEL": "claude-haiku-4-5",
        }
    )
    refused_prompt = unique("[[claude:celebrity_likeness]] a portrait")
    fine_prompt = unique("a lighthouse in fog")
    refused, fine = (stack.wait_terminal(stack.enqueue(p)) for p in (refused_prompt, fine_prompt))
    assert refused["status"] == "refused", refused
    assert refused["refusal_source"] == "prefilter"
    assert refused["refusal_category"] == "celebrity_likeness"
    assert refused["attempts"] == 0
    submissions = stack.emulator.stats()["submissions_by_prompt"]
    assert submissions.get(refused_prompt, 0) == 0
    assert fine["status"] == "succeeded" and submissions.get(fine_prompt) == 1
    logs = stack.logs()
    assert "moderation.chain" in logs and "anthropic_prompt_version=anthropic_v1" in logs
    assert API_KEY not in logs
    asked = [body["messages"][0]["content"] for _, _, body in behaviour.requests]
    assert sorted(asked) == sorted([refused_prompt, fine_prompt])
    assert {body["model"] for _, _, body in behaviour.requests} == {"claude-haiku-4-5"}
