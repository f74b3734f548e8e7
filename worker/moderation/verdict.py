"""What a moderation check answers, and the two ways a check can go wrong.

Every checker (the rules file, OpenAI's moderation endpoint) answers with a ``Verdict``,
so the pipeline and the CLI never care which one refused. Category names are fal's own
where fal has one, so a pre-refusal and a refusal from fal land in the same
``refusal_category`` bucket of the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from imagegen.worker.constants import SOFT_BLOCK_CATEGORIES
from imagegen.worker.errors import ConfigurationError, ImagegenError

SEXUAL_MINORS = "sexual_minors"
VIOLENCE_NAMED_INDIVIDUAL = "violence_named_individual"
CELEBRITY_LIKENESS = "celebrity_likeness"
TRADEMARK_IP = "trademark_ip"
SELF_HARM_INSTRUCTIONS = "self_harm_instructions"
HATE_PROTECTED_GROUP = "hate_protected_group"

#: The categories imagegen knows, most severe first; a rules file may add its own names.
CATEGORIES = (
    SEXUAL_MINORS,
    SELF_HARM_INSTRUCTIONS,
    HATE_PROTECTED_GROUP,
    VIOLENCE_NAMED_INDIVIDUAL,
    CELEBRITY_LIKENESS,
    TRADEMARK_IP,
)

_PREFIX = "This prompt was refused before generation"
#: What the end user reads: one sentence that names the category.
MESSAGES = {
    SEXUAL_MINORS: f"{_PREFIX}: it appears to sexualise minors ({SEXUAL_MINORS}).",
    SELF_HARM_INSTRUCTIONS: (
        f"{_PREFIX}: it appears to ask for self-harm instructions ({SELF_HARM_INSTRUCTIONS})."
    ),
    HATE_PROTECTED_GROUP: (
        f"{_PREFIX}: it appears to attack a protected group ({HATE_PROTECTED_GROUP})."
    ),
    VIOLENCE_NAMED_INDIVIDUAL: (
        f"{_PREFIX}: it appears to depict a real, named person being harmed "
        f"({VIOLENCE_NAMED_INDIVIDUAL})."
    ),
    CELEBRITY_LIKENESS: (
        f"{_PREFIX}: it appears to ask for the likeness of a real public figure "
        f"({CELEBRITY_LIKENESS})."
    ),
    TRADEMARK_IP: (
        f"{_PREFIX}: it appears to ask for a trademarked character or brand ({TRADEMARK_IP}); "
        "to go ahead, submit a new job whose prompt asks for an original or clearly derivative "
        "design."
    ),
}


def refusal_message(category: str) -> str:
    """The user-facing sentence for a category, generic for names a rules file adds."""
    return MESSAGES.get(category, f"{_PREFIX}: it was flagged by content moderation ({category}).")


@dataclass(frozen=True)
class Verdict:
    """One checker's (or the chain's) answer about one prompt.

    ``source`` names who decided: ``rules`` or ``openai`` for a refusal; for a pass, the
    checkers that looked at the prompt (``rules,openai``; ``off`` when none did).
    ``soft`` marks a refusal the user may get past by rewording (see ``TRADEMARK_IP``).
    ``skipped`` lists checkers that were unavailable and skipped (fail open).
    """

    refused: bool
    category: str | None
    source: str
    message: str | None = None
    soft: bool = False
    skipped: tuple[str, ...] = ()

    @classmethod
    def passed(cls, source: str, *, skipped: tuple[str, ...] = ()) -> Verdict:
        """The prompt may go to fal."""
        return cls(refused=False, category=None, source=source, skipped=skipped)

    @classmethod
    def refusal(cls, category: str, source: str) -> Verdict:
        """The prompt must not go to fal; message and softness follow from the category."""
        return cls(
            refused=True,
            category=category,
            source=source,
            message=refusal_message(category),
            soft=category in SOFT_BLOCK_CATEGORIES,
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``imagegen moderate --json``."""
        return {
            "verdict": "refuse" if self.refused else "pass",
            "category": self.category,
            "source": self.source,
            "soft": self.soft,
            "message": self.message,
            "skipped": list(self.skipped),
        }


#: A pass from no checker at all (``IMAGEGEN_MODERATION=off``).
PASS = Verdict.passed("off")


class ModerationUnavailable(ImagegenError):
    """A checker could not give a verdict (down, slow, refused our key, answered garbage)."""

    retryable = True

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source} moderation unavailable: {reason}")
        self.source = source
        self.reason = reason


class ModerationConfigError(ConfigurationError, ValueError):
    """The moderation setup is unusable (unknown checker, bad rules file, missing key)."""


class Moderator(Protocol):
    """A checker: ``check`` answers a verdict or raises ``ModerationUnavailable``."""

    name: str

    def check(self, prompt: str) -> Verdict: ...
