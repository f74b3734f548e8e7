"""The moderation chain the settings ask for (worker runs and ``imagegen moderate``)."""

from __future__ import annotations

from pydantic import SecretStr

from imagegen.worker import metrics
from imagegen.worker.logs import get_logger
from imagegen.worker.moderation import Chain, build_chain
from imagegen.worker.settings import Settings

log = get_logger(__name__)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def moderation_chain(settings: Settings, *, announce: bool = False) -> Chain | None:
    """None when IMAGEGEN_MODERATION is off; ModerationConfigError for a bad setup.

    ``announce`` logs the chain once, with what decides each checker's verdicts (the
    anthropic checker's model and prompt version), so a refusal can be traced to them.
    """
    if settings.moderation == "off":
        return None
    chain = build_chain(
        settings.moderation,
        rules_file=settings.moderation_rules_file,
        openai_base_url=settings.openai_base_url,
        openai_api_key=_secret(settings.openai_api_key),
        openai_model=settings.openai_moderation_model,
        anthropic_base_url=settings.anthropic_base_url,
        anthropic_api_key=_secret(settings.anthropic_api_key),
        anthropic_model=settings.anthropic_moderation_model,
        timeout_s=settings.moderation_timeout_s,
        fail_closed=settings.moderation_fail_closed,
        on_unavailable=lambda source: metrics.MODERATION_UNAVAILABLE.labels(source).inc(),
    )
    if announce:
        details: dict[str, str] = {}
        for checker in chain.checkers:
            describe = getattr(checker, "describe", None)
            if callable(describe):
                details |= {f"{checker.name}_{key}": value for key, value in describe().items()}
        log.info(
            "moderation.chain",
            chain=chain.spec,
            fail_closed=chain.fail_closed,
            timeout_s=settings.moderation_timeout_s,
            **details,
        )
    return chain
