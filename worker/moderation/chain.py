"""The configured checkers in order: the first refusal wins.

A checker that cannot answer (``ModerationUnavailable``) is counted and reported to the
``on_unavailable`` hook either way; then the chain fails open (skip it: fal still moderates
and the prompt is merely not pre-filtered) or fails closed (re-raise, so the caller fails
the job or retries it later). Open is the default because fal refuses on its own anyway:
an outage of the pre-filter costs money, not safety.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from imagegen.worker.logs import get_logger
from imagegen.worker.moderation.anthropic_api import DEFAULT_BASE_URL as ANTHROPIC_BASE_URL
from imagegen.worker.moderation.anthropic_api import DEFAULT_MODEL as ANTHROPIC_MODEL
from imagegen.worker.moderation.anthropic_api import AnthropicModerator
from imagegen.worker.moderation.openai_api import DEFAULT_BASE_URL as OPENAI_BASE_URL
from imagegen.worker.moderation.openai_api import DEFAULT_MODEL as OPENAI_MODEL
from imagegen.worker.moderation.openai_api import DEFAULT_TIMEOUT_S, OpenAIModerator
from imagegen.worker.moderation.rules import RulesModerator
from imagegen.worker.moderation.verdict import (
    ModerationConfigError,
    ModerationUnavailable,
    Moderator,
    Verdict,
)

OFF = "off"
CHECKERS = ("rules", "openai", "anthropic")
#: Source of a pass when every configured checker was unavailable and skipped.
NONE_CONSULTED = "none"

log = get_logger(__name__)


class Chain:
    """Runs checkers in order; see the module doc for what happens when one is down."""

    def __init__(
        self,
        checkers: Sequence[Moderator],
        *,
        fail_closed: bool = False,
        on_unavailable: Callable[[str], None] | None = None,
    ) -> None:
        self.checkers = tuple(checkers)
        self.fail_closed = fail_closed
        self.on_unavailable = on_unavailable
        self._lock = threading.Lock()
        self._unavailable_count = 0

    @property
    def spec(self) -> str:
        """The chain as ``IMAGEGEN_MODERATION`` spells it (``off``, ``rules,openai``)."""
        return ",".join(c.name for c in self.checkers) or OFF

    @property
    def unavailable_count(self) -> int:
        """How many times a checker could not answer since this chain was built."""
        return self._unavailable_count

    def check(self, prompt: str) -> Verdict:
        """The first refusal, or a pass naming the checkers consulted and those skipped."""
        if not self.checkers:
            return Verdict.passed(OFF)
        consulted: list[str] = []
        skipped: list[str] = []
        for checker in self.checkers:
            try:
                verdict = checker.check(prompt)
            except ModerationUnavailable as exc:
                self._unavailable(checker.name, exc)
                if self.fail_closed:
                    raise
                skipped.append(checker.name)
                continue
            if verdict.refused:
                return verdict
            consulted.append(checker.name)
        return Verdict.passed(",".join(consulted) or NONE_CONSULTED, skipped=tuple(skipped))

    def close(self) -> None:
        """Release the checkers' connections (the openai and anthropic checkers keep pools)."""
        for checker in self.checkers:
            close = getattr(checker, "close", None)
            if callable(close):
                close()

    def _unavailable(self, name: str, exc: ModerationUnavailable) -> None:
        with self._lock:
            self._unavailable_count += 1
        log.warning(
            "moderation.unavailable",
            source=name,
            reason=exc.reason,
            outcome="fail_closed" if self.fail_closed else "fail_open",
        )
        if self.on_unavailable is not None:
            self.on_unavailable(name)


def parse_spec(spec: str) -> tuple[str, ...]:
    """``"rules, openai"`` -> ``("rules", "openai")``; ``"off"`` -> ``()``."""
    valid = f"valid values: {OFF}, {', '.join(CHECKERS)}, or a comma-separated chain such as "
    valid += "'rules,openai'"
    names = [piece.strip().lower() for piece in spec.split(",")]
    if names == [OFF]:
        return ()
    for name in names:
        if name not in CHECKERS:
            shown = f"'{name}'" if name else "an empty name"
            raise ModerationConfigError(f"moderation chain {spec!r}: {shown} is unknown; {valid}")
    if len(set(names)) != len(names):
        raise ModerationConfigError(f"moderation chain {spec!r} names a checker twice; {valid}")
    return tuple(names)


def build_chain(
    spec: str,
    *,
    rules_file: Path | None = None,
    openai_base_url: str = OPENAI_BASE_URL,
    openai_api_key: str | None = None,
    openai_model: str = OPENAI_MODEL,
    anthropic_base_url: str = ANTHROPIC_BASE_URL,
    anthropic_api_key: str | None = None,
    anthropic_model: str = ANTHROPIC_MODEL,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    fail_closed: bool = False,
    on_unavailable: Callable[[str], None] | None = None,
) -> Chain:
    """Build the chain ``spec`` names; every configuration problem is raised here, once.

    ``rules_file`` None means the shipped ``default_rules.toml``. The openai checker needs a
    key when it talks to OpenAI itself; a compatible server at another base URL may not.
    The anthropic checker always needs one (without it the SDK would look for credentials
    of its own: environment, profile files).
    """
    names = parse_spec(spec)
    remote = set(names) & {"openai", "anthropic"}
    if remote and timeout_s <= 0:
        raise ModerationConfigError(f"moderation timeout must be positive, got {timeout_s}")
    if "openai" in remote and not openai_api_key and openai_base_url.rstrip("/") == OPENAI_BASE_URL:
        raise ModerationConfigError(
            "openai moderation needs an API key (OPENAI_API_KEY) to call api.openai.com"
        )
    if "anthropic" in remote and not anthropic_api_key:
        raise ModerationConfigError("anthropic moderation needs an API key (ANTHROPIC_API_KEY)")
    checkers: list[Moderator] = []
    for name in names:
        if name == "rules":
            checkers.append(RulesModerator.from_file(rules_file))
        elif name == "openai":
            checkers.append(
                OpenAIModerator(
                    base_url=openai_base_url,
                    api_key=openai_api_key,
                    model=openai_model,
                    timeout_s=timeout_s,
                )
            )
        elif anthropic_api_key:  # always set here: checked above
            checkers.append(
                AnthropicModerator(
                    base_url=anthropic_base_url,
                    api_key=anthropic_api_key,
                    model=anthropic_model,
                    timeout_s=timeout_s,
                )
            )
    return Chain(checkers, fail_closed=fail_closed, on_unavailable=on_unavailable)
