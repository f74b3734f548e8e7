"""A checker backed by Claude, through Anthropic's Messages API (``POST {base_url}/v1/messages``).

Claude reads the system prompt of ``prompts/anthropic_v1.md`` and the user's prompt as the
only user turn, and answers by calling one tool, ``classify_prompt``, whose ``category`` is
one of imagegen's categories (fal's names) or ``none``. ``tool_choice`` forces that call
and ``strict`` has the API hold the input to the schema; the answer is still checked here.
A category refuses, ``none`` passes. The prompt file's name is its version
(``anthropic_v1``): give a changed meaning a new file, so logs tell the two apart.

The default model is Claude Haiku 5.5 (``claude-haiku-5-5``): Anthropic's smallest and
cheapest current model, made for classification and routing; a check costs a few hundred
input tokens and about twenty output tokens. Thinking is disabled: a forced tool call
does not go with thinking, and a seven-way label needs none.

Claude may not answer: a ``refusal`` stop reason, an API error (timeout, 429, 5xx, 529
overloaded, a rejected key), or a reply without a well-formed tool call. Each raises
``ModerationUnavailable``, so the chain skips this checker (fail open) or fails the job
(fail closed); none is ever read as a pass.

The SDK's own retries are off (``max_retries=0``): each would wait the whole timeout again
after a backoff, so one check could last three times IMAGEGEN_MODERATION_TIMEOUT_S; the
pipeline retries a job whose moderation was unavailable (fail closed) or lets fal judge it
(fail open). The SDK is imported on first use: it takes seconds to import, and a worker
without this checker should not pay for it.

The key is a secret and prompts are user data: neither is logged nor put in an error.
SDK errors are raised ``from None``, as their request holds the key (the SDK sends it as
``Authorization: Bearer``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagegen.worker.moderation.verdict import (
    CATEGORIES,
    ModerationConfigError,
    ModerationUnavailable,
    Verdict,
)

if TYPE_CHECKING:
    import anthropic
    import httpx2
    from anthropic.types import Message, ToolParam

SOURCE = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-haiku-5-5"
DEFAULT_TIMEOUT_S = 5.0
PROMPT_FILE = Path(__file__).with_name("prompts") / "anthropic_v1.md"
TOOL_NAME = "classify_prompt"
#: The tool's answer for a prompt that fits no category.
NO_CATEGORY = "none"
#: Room for the one tool call (about twenty tokens); output tokens are billed.
MAX_TOKENS = 128


@dataclass(frozen=True)
class SystemPrompt:
    """The system prompt's text, version (the file's stem) and a short hash of the text."""

    text: str
    version: str
    sha256: str

    @classmethod
    def load(cls, path: Path = PROMPT_FILE) -> SystemPrompt:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ModerationConfigError(
                f"anthropic moderation prompt {path}: cannot be read ({reason})"
            ) from None
        if not text:
            raise ModerationConfigError(f"anthropic moderation prompt {path} is empty")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        return cls(text=text, version=path.stem, sha256=digest)


def classification_tool(categories: Sequence[str] = CATEGORIES) -> ToolParam:
    """The tool Claude must call: one ``category`` out of ``categories`` plus ``none``."""
    return {
        "name": TOOL_NAME,
        "description": "Record the moderation category of the image prompt, or none.",
        "input_schema": {
            "type": "object",
            "properties": {
                "category": {
                    "type": "string",
                    "enum": [*categories, NO_CATEGORY],
                    "description": "The first category that clearly applies, else none.",
                }
            },
            "required": ["category"],
            "additionalProperties": False,
        },
        "strict": True,
    }


def category_of(message: Any, categories: Sequence[str] = CATEGORIES) -> str | None:
    """The category Claude's tool call names (None for ``none``); ValueError without one.

    The reasons never quote Claude's text, which may repeat the prompt.
    """
    stop_reason = getattr(message, "stop_reason", None)
    if stop_reason == "refusal":
        raise ValueError("Claude declined to classify the prompt (stop_reason refusal)")
    content = getattr(message, "content", None)
    calls = [
        block
        for block in (content if isinstance(content, list) else [])
        if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == TOOL_NAME
    ]
    if len(calls) != 1:
        raise ValueError(f"no single {TOOL_NAME} call in the answer (stop_reason {stop_reason})")
    tool_input = getattr(calls[0], "input", None)
    category = tool_input.get("category") if isinstance(tool_input, dict) else None
    if category == NO_CATEGORY:
        return None
    if not isinstance(category, str) or category not in categories:
        raise ValueError(f"the {TOOL_NAME} call names no known category")
    return category


def _status_reason(status: int) -> str:
    if status in (401, 403):
        return f"HTTP {status}: the API key was rejected; check ANTHROPIC_API_KEY"
    if status == 429:
        return "HTTP 429: rate limited"
    if status == 529:
        return "HTTP 529: Anthropic's API is overloaded"
    if status >= 500:
        return f"HTTP {status}: server error"
    if status == 404:
        return "HTTP 404: check the base URL and model"
    return f"HTTP {status}: the request was rejected (check the model)"


class AnthropicModerator:
    """Asks Claude to classify a prompt; raises ``ModerationUnavailable`` when it cannot."""

    name = SOURCE

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        prompt: SystemPrompt | None = None,
        categories: Sequence[str] = CATEGORIES,
        http_client: httpx2.Client | None = None,
    ) -> None:
        import anthropic  # seconds to import: only when this checker is configured

        self.prompt = prompt or SystemPrompt.load()
        self.model = model
        self.timeout_s = timeout_s
        self.categories = tuple(categories)
        self._tool = classification_tool(self.categories)
        # An explicit key and base URL: the SDK then reads no credentials of its own.
        self._client: anthropic.Anthropic = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            max_retries=0,
            http_client=http_client,
        )

    def describe(self) -> dict[str, str]:
        """What decides this checker's verdicts, for a log line (no secrets)."""
        return {
            "model": self.model,
            "prompt_version": self.prompt.version,
            "prompt_sha256": self.prompt.sha256,
        }

    def close(self) -> None:
        self._client.close()

    def check(self, prompt: str) -> Verdict:
        message = self._ask(prompt)
        try:
            category = category_of(message, self.categories)
        except ValueError as exc:
            raise ModerationUnavailable(SOURCE, str(exc)) from None
        if category is None:
            return Verdict.passed(SOURCE)
        return Verdict.refusal(category, SOURCE)

    def _ask(self, prompt: str) -> Message:
        """Claude's answer; every failure becomes one line without key or prompt."""
        import anthropic

        try:
            return self._client.messages.create(
                model=self.model,
                max_tokens=MAX_TOKENS,
                system=self.prompt.text,
                messages=[{"role": "user", "content": prompt}],
                tools=[self._tool],
                tool_choice={"type": "tool", "name": TOOL_NAME, "disable_parallel_tool_use": True},
                thinking={"type": "disabled"},
            )
        except anthropic.APITimeoutError:
            reason = f"no answer within {self.timeout_s:g}s"
            raise ModerationUnavailable(SOURCE, reason) from None
        except anthropic.APIConnectionError as exc:
            cause = type(exc.__cause__ or exc).__name__
            raise ModerationUnavailable(SOURCE, f"unreachable ({cause})") from None
        except anthropic.APIStatusError as exc:
            raise ModerationUnavailable(SOURCE, _status_reason(exc.status_code)) from None
        except UnicodeEncodeError:  # a lone surrogate: nothing was sent
            raise ModerationUnavailable(SOURCE, "the prompt is not valid UTF-8") from None
        except (anthropic.AnthropicError, ValueError) as exc:
            reason = f"unexpected answer ({type(exc).__name__})"
            raise ModerationUnavailable(SOURCE, reason) from None
