"""The moderation chain the settings ask for (worker runs and ``imagegen moderate``)."""

from __future__ import annotations

from worker import metrics
from worker.moderation import Chain, build_chain
from worker.settings import Settings


def moderation_chain(settings: Settings) -> Chain | None:
    """None when IMAGEGEN_MODERATION is off; ModerationConfigError for a bad setup."""
    if settings.moderation == "off":
        return None
    key = settings.openai_api_key
    return build_chain(
        settings.moderation,
        rules_file=settings.moderation_rules_file,
        openai_base_url=settings.openai_base_url,
        openai_api_key=key.get_secret_value() if key is not None else None,
        openai_model=settings.openai_moderation_model,
        timeout_s=settings.moderation_timeout_s,
        fail_closed=settings.moderation_fail_closed,
        on_unavailable=lambda source: metrics.MODERATION_UNAVAILABLE.labels(source).inc(),
    )
