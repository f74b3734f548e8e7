"""Scenario directives: `[[fal:STEP1,STEP2,...]]` inside a prompt steers the emulator.

The k-th submission (0-based) of a prompt uses STEP[min(k, len-1)]; no directive means `ok`.
A step may carry `+`-joined modifiers: `latency:S`, `nowebhook` (the callback to
`fal_webhook` is never delivered, as if lost) and `bytes:N` (every output image is a noise PNG
of exactly N bytes, for copy benchmarks; N from MIN_IMAGE_BYTES to MAX_IMAGE_BYTES).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from .reply import (
    DROP,
    HANG,
    PLAIN_ERROR_PAGE,
    Reply,
    html_reply,
    json_reply,
    nginx_reply,
    rid_header,
    truncated_json_reply,
)

_DIRECTIVE = re.compile(r"\[\[fal:([^\]]*)\]\]")

# Steps answered at submit time; no request is created.
SUBMIT_STEPS = frozenset(
    [
        "429",
        "502",
        "503",
        "504",
        "503json",
        "500",
        "504user",
        "403lock",
        "401",
        "refuse",
        "refuse422",
        "invalid",
        "html",
        "malformed",
        "hang",
        "drop",
    ]
)
# Steps for which a request is created; their effect shows later (or, for slow, on the answer).
CREATE_STEPS = frozenset(
    [
        "ok",
        "slow",
        "late-refuse",
        "status-refuse",
        "header-refuse",
        "runner-disconnected",
        "no-images",
        "result-malformed",
        "result-html",
        "status-unknown",
        "status-hang",
        "status-drop",
        "url-404",
    ]
)
_NEEDS_CATEGORY = frozenset(
    {"refuse", "refuse422", "late-refuse", "status-refuse", "header-refuse"}
)
_NEEDS_SECONDS = frozenset({"slow"})
_OPTIONAL_SECONDS = frozenset({"429"})
MIN_IMAGE_BYTES = 1024
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # each size is cached in memory once

CONTENT_POLICY = "content_policy_violation"
REFUSAL_MESSAGES = {
    "sexual_minors": (
        "This prompt asks for sexual content involving minors, which is never allowed."
    ),
    "violence_named_individual": (
        "This prompt asks for violence against a real, named person, which is not allowed."
    ),
    "celebrity_likeness": (
        "This prompt asks for the likeness of a real public figure, which is not allowed "
        "without their consent."
    ),
    "trademark_ip": (
        "This prompt asks for trademarked characters or brands, which cannot be generated "
        "without the rights holder's permission."
    ),
    "self_harm_instructions": (
        "This prompt asks for instructions for self-harm, which is not allowed."
    ),
    "hate_protected_group": (
        "This prompt asks for hateful content about a protected group, which is not allowed."
    ),
}


class UnknownStep(ValueError):
    """A directive step the emulator does not know."""

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step

    def reply(self) -> Reply:
        return json_reply(400, {"detail": f"emulator: unknown directive step '{self.step}'"})


@dataclass(frozen=True)
class Step:
    name: str
    arg: str | None = None
    latency_s: float | None = None
    webhook: bool = True
    #: the `bytes:N` modifier: output images are noise PNGs of exactly N bytes
    image_bytes: int | None = None

    @property
    def seconds(self) -> float:
        return float(self.arg) if self.arg is not None else 1.0


OK = Step("ok")


def _is_seconds(text: str | None) -> bool:
    try:
        return text is not None and float(text) >= 0
    except ValueError:
        return False


def _arg_ok(name: str, arg: str | None) -> bool:
    if name in _NEEDS_CATEGORY:
        return bool(arg)
    if name in _NEEDS_SECONDS:
        return _is_seconds(arg)
    if name in _OPTIONAL_SECONDS:
        return arg is None or _is_seconds(arg)
    return arg is None


def _image_bytes(value: str) -> int | None:
    number = int(value) if value.isdigit() else 0
    return number if MIN_IMAGE_BYTES <= number <= MAX_IMAGE_BYTES else None


def parse_step(text: str) -> Step:
    """Parse `name[:arg][+latency:S][+nowebhook][+bytes:N]`; raise UnknownStep if invalid."""
    head, *modifiers = text.strip().split("+")
    name, _, arg_text = head.partition(":")
    arg = arg_text if ":" in head else None
    if name not in SUBMIT_STEPS | CREATE_STEPS or not _arg_ok(name, arg):
        raise UnknownStep(text.strip())
    step = Step(name, arg)
    for modifier in modifiers:
        key, _, value = modifier.partition(":")
        if modifier == "nowebhook":
            step = replace(step, webhook=False)
        elif key == "latency" and _is_seconds(value):
            step = replace(step, latency_s=float(value))
        elif key == "bytes" and _image_bytes(value) is not None:
            step = replace(step, image_bytes=_image_bytes(value))
        else:
            raise UnknownStep(text.strip())
    return step


def step_for(prompt: str | None, k: int) -> Step:
    """The step the k-th (0-based) submission of `prompt` uses."""
    match = _DIRECTIVE.search(prompt or "")
    if match is None:
        return OK
    steps = match.group(1).split(",")
    return parse_step(steps[min(k, len(steps) - 1)])


def refusal_message(category: str) -> str:
    generic = f"Your request was flagged by our content policy ({category})."
    return REFUSAL_MESSAGES.get(category, generic)


def policy_detail(category: str, prompt: Any) -> list[dict[str, Any]]:
    """fal's model-error shape for a content policy refusal (a 422 `detail` list)."""
    return [
        {
            "loc": ["body", "prompt"],
            "msg": refusal_message(category),
            "type": CONTENT_POLICY,
            "url": f"https://docs.fal.ai/errors#{CONTENT_POLICY}",
            "ctx": {"category": category},
            "input": prompt,
        }
    ]


def policy_422(category: str, prompt: Any, *headers: tuple[str, str]) -> Reply:
    body = {"detail": policy_detail(category, prompt)}
    return json_reply(422, body, ("X-Fal-Retryable", "false"), *headers)


def _invalid(payload: dict[str, Any]) -> Reply:
    detail = {
        "loc": ["body", "num_images"],
        "msg": "Input should be less than or equal to 4",
        "type": "less_than_equal",
        "url": "https://docs.fal.ai/errors#less_than_equal",
        "ctx": {"le": 4},
        "input": payload.get("num_images"),
    }
    return json_reply(422, {"detail": [detail]}, ("X-Fal-Retryable", "false"))


def _infra(status: int, detail: str, error_type: str, *extra: tuple[str, str]) -> Reply:
    body = {"detail": detail, "error_type": error_type}
    return json_reply(status, body, ("X-Fal-Error-Type", error_type), rid_header(), *extra)


def submit_reply(step: Step, payload: dict[str, Any]) -> Reply:
    """The answer for a submit-time step (one in SUBMIT_STEPS)."""
    name, category = step.name, step.arg or ""
    prompt = payload.get("prompt")
    if name == "429":
        seconds = f"{step.seconds:g}"
        return json_reply(429, {"detail": "Too many requests"}, ("Retry-After", seconds))
    if name in {"502", "503", "504"}:
        return nginx_reply(int(name))
    if name == "503json":
        return _infra(503, "No runner available", "runner_scheduling_failure")
    if name == "500":
        body = {"detail": "Internal server error", "error_type": "internal_error"}
        return json_reply(500, body, rid_header())
    if name == "504user":
        timeout_type = ("X-Fal-Request-Timeout-Type", "user")
        return _infra(504, "Request timed out", "startup_timeout", timeout_type)
    return _submit_reply_4xx(name, category, prompt, payload)


def _submit_reply_4xx(name: str, category: str, prompt: Any, payload: dict[str, Any]) -> Reply:
    if name == "403lock":
        detail = (
            "User is locked. Reason: Exhausted balance. "
            "Top up your balance at fal.ai/dashboard/billing."
        )
        return json_reply(403, {"detail": detail})
    if name == "401":
        return json_reply(401, {"detail": "Invalid API key"})
    if name == "refuse":
        seed = {"error": CONTENT_POLICY, "category": category, "message": refusal_message(category)}
        return json_reply(400, {"detail": seed})
    if name == "refuse422":
        return policy_422(category, prompt)
    if name == "invalid":
        return _invalid(payload)
    if name == "html":
        return html_reply(500, PLAIN_ERROR_PAGE)
    if name == "malformed":
        return truncated_json_reply()
    return HANG if name == "hang" else DROP
