"""A checker backed by OpenAI's moderation endpoint (``POST {base_url}/moderations``).

The request is ``{"model": "omni-moderation-latest", "input": prompt}`` with a bearer key;
the answer is ``{"id", "model", "results": [{"flagged", "categories": {name: bool},
"category_scores": {name: float}, ...}]}``. Any compatible server works (set the base URL).

OpenAI's categories are mapped to ours; when several are flagged, the first row of this
table that is flagged wins:

=========================  ===========================  ====================================
OpenAI category            imagegen category            why
=========================  ===========================  ====================================
sexual/minors              sexual_minors                same meaning
self-harm/instructions     self_harm_instructions       same meaning
self-harm/intent           self_harm_instructions       a stated intent asks for the means
hate/threatening           hate_protected_group         OpenAI's hate is about protected
hate                       hate_protected_group         attributes, as ours is
harassment/threatening     violence_named_individual    violence threatened at a target
=========================  ===========================  ====================================

Everything else OpenAI flags (``sexual``, ``self-harm``, ``harassment``, ``illicit``,
``illicit/violent``, ``violence``, ``violence/graphic``) passes to fal: those categories
cover adult content, fiction, war scenes and news imagery that fal may well accept, and
``violence`` cannot tell a real, named victim from a fictional one. fal stays the
authority; this checker only refuses early what fal is sure to refuse. Pass
``category_map`` to change the table.

Prompts are user data and the key is a secret: neither is logged nor put in an error.
Errors are raised ``from None`` on purpose: httpx's exceptions hold the request, whose
``Authorization`` header a traceback renderer that shows locals would print.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from imagegen.worker.moderation.verdict import (
    HATE_PROTECTED_GROUP,
    SELF_HARM_INSTRUCTIONS,
    SEXUAL_MINORS,
    VIOLENCE_NAMED_INDIVIDUAL,
    ModerationUnavailable,
    Verdict,
)

SOURCE = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "omni-moderation-latest"
DEFAULT_TIMEOUT_S = 5.0

#: OpenAI category -> imagegen category, in priority order (see the module doc).
CATEGORY_MAP: Mapping[str, str] = {
    "sexual/minors": SEXUAL_MINORS,
    "self-harm/instructions": SELF_HARM_INSTRUCTIONS,
    "self-harm/intent": SELF_HARM_INSTRUCTIONS,
    "hate/threatening": HATE_PROTECTED_GROUP,
    "hate": HATE_PROTECTED_GROUP,
    "harassment/threatening": VIOLENCE_NAMED_INDIVIDUAL,
}


def flagged_categories(body: Any) -> list[str]:
    """The OpenAI categories flagged in a moderation answer, or ValueError on a wrong shape."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or not results:
        raise ValueError("no 'results' list")
    flagged: list[str] = []
    for result in results:
        categories = result.get("categories") if isinstance(result, dict) else None
        if not isinstance(categories, dict) or not isinstance(result.get("flagged"), bool):
            raise ValueError("a result lacks 'flagged' or 'categories'")
        for name, value in categories.items():
            if not isinstance(value, bool):
                raise ValueError("a category is not a boolean")
            if value:
                flagged.append(name)
    return flagged


def _status_reason(status: int) -> str:
    if status in (401, 403):
        return f"HTTP {status}: the API key was rejected; check the configured key"
    if status == 429:
        return "HTTP 429: rate limited"
    if status >= 500:
        return f"HTTP {status}: server error"
    if status == 404:
        return "HTTP 404: check the base URL and model"
    return f"HTTP {status}: the request was rejected"


class OpenAIModerator:
    """Asks OpenAI's moderation endpoint; raises ``ModerationUnavailable`` when it cannot."""

    name = SOURCE

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None,
        model: str = DEFAULT_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        category_map: Mapping[str, str] = CATEGORY_MAP,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = base_url.rstrip("/") + "/moderations"
        self.model = model
        self.timeout_s = timeout_s
        self.category_map = dict(category_map)
        self._client = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._client.close()

    def check(self, prompt: str) -> Verdict:
        body = self._post({"model": self.model, "input": prompt})
        try:
            flagged = set(flagged_categories(body))
        except ValueError as exc:
            raise ModerationUnavailable(SOURCE, f"unexpected answer shape: {exc}") from None
        for theirs, ours in self.category_map.items():
            if theirs in flagged:
                return Verdict.refusal(ours, SOURCE)
        return Verdict.passed(SOURCE)

    def _post(self, payload: dict[str, str]) -> Any:
        """The decoded JSON answer; every failure becomes one line without key or prompt."""
        try:
            response = self._client.post(self.url, json=payload)
        except httpx.TimeoutException:
            reason = f"no answer within {self.timeout_s:g}s"
            raise ModerationUnavailable(SOURCE, reason) from None
        except httpx.HTTPError as exc:
            raise ModerationUnavailable(SOURCE, f"unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise ModerationUnavailable(SOURCE, _status_reason(response.status_code))
        try:
            return response.json()
        except ValueError:
            raise ModerationUnavailable(SOURCE, "the answer is not JSON") from None
