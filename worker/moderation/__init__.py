"""Pre-filter moderation: refuse a prompt before the billable call to fal.

Build the chain once per process from settings, then ask it about each prompt::

    chain = build_chain("rules,openai", openai_api_key=key, timeout_s=5.0, fail_closed=False)
    verdict = chain.check(prompt)  # may raise ModerationUnavailable when fail_closed
    if verdict.refused:
        ...  # record verdict.category and verdict.message; never call fal

``rules`` is the local classifier (``worker.moderation.rules``, file format in
``default_rules.toml``), ``openai`` the adapter for OpenAI's moderation endpoint
(``worker.moderation.openai_api``), ``anthropic`` a Claude classifier
(``worker.moderation.anthropic_api``, its system prompt in ``prompts/``);
``worker.moderation.chain`` runs them in order.
"""

from imagegen.worker.moderation.anthropic_api import AnthropicModerator
from imagegen.worker.moderation.chain import OFF, Chain, build_chain, parse_spec
from imagegen.worker.moderation.openai_api import CATEGORY_MAP, OpenAIModerator
from imagegen.worker.moderation.rules import DEFAULT_RULES_FILE, RulesModerator
from imagegen.worker.moderation.verdict import (
    CATEGORIES,
    CELEBRITY_LIKENESS,
    HATE_PROTECTED_GROUP,
    PASS,
    SELF_HARM_INSTRUCTIONS,
    SEXUAL_MINORS,
    TRADEMARK_IP,
    VIOLENCE_NAMED_INDIVIDUAL,
    ModerationConfigError,
    ModerationUnavailable,
    Moderator,
    Verdict,
    refusal_message,
)

__all__ = [
    "CATEGORIES",
    "CATEGORY_MAP",
    "CELEBRITY_LIKENESS",
    "DEFAULT_RULES_FILE",
    "HATE_PROTECTED_GROUP",
    "OFF",
    "PASS",
    "SELF_HARM_INSTRUCTIONS",
    "SEXUAL_MINORS",
    "TRADEMARK_IP",
    "VIOLENCE_NAMED_INDIVIDUAL",
    "AnthropicModerator",
    "Chain",
    "ModerationConfigError",
    "ModerationUnavailable",
    "Moderator",
    "OpenAIModerator",
    "RulesModerator",
    "Verdict",
    "build_chain",
    "parse_spec",
    "refusal_message",
]
