"""What a job may ask GPT Image 2 for, validated before anything is written."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.constants import (
    IMAGE_SIZE_PRESETS,
    MAX_ASPECT_RATIO,
    MAX_EDGE_PX,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_NUM_IMAGES,
    MAX_PROMPT_CHARS,
    OUTPUT_FORMATS,
    QUALITIES,
    SIZE_MULTIPLE_PX,
)
from worker.errors import JobRequestError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX\u00d7]\s*(\d+)\s*$")
ImageSize = str | dict[str, int]


def parse_size(value: Any) -> ImageSize:
    """A preset name, ``WIDTHxHEIGHT``, a (w, h) pair or ``{"width", "height"}``."""
    if isinstance(value, str):
        if value in IMAGE_SIZE_PRESETS:
            return value
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError(
                f"unknown size {value!r}: use one of {', '.join(IMAGE_SIZE_PRESETS)} "
                "or WIDTHxHEIGHT such as 1024x1536"
            )
        width, height = int(match[1]), int(match[2])
    elif isinstance(value, dict) and set(value) == {"width", "height"}:
        width, height = value["width"], value["height"]
    elif isinstance(value, list | tuple) and len(value) == 2:
        width, height = value
    else:
        raise ValueError("size must be a preset name, WIDTHxHEIGHT or {width, height}")
    _check_dimensions(width, height)
    return {"width": width, "height": height}


def _check_dimensions(width: Any, height: Any) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
        raise ValueError("width and height must be whole numbers of pixels")
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    if width % SIZE_MULTIPLE_PX or height % SIZE_MULTIPLE_PX:
        raise ValueError(f"width and height must be multiples of {SIZE_MULTIPLE_PX}")
    if max(width, height) > MAX_EDGE_PX:
        raise ValueError(f"the longest edge must be at most {MAX_EDGE_PX} px")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError("the aspect ratio must be at most 3:1")


class JobRequest(BaseModel):
    """One generation request: the prompt and GPT Image 2's inputs (fal's defaults filled in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    image_size: ImageSize = "landscape_4_3"
    quality: str = "high"
    num_images: int = Field(1, strict=True)
    output_format: str = "png"
    idempotency_key: str | None = None
    #: not a model input: where the job's JSON is POSTed when it ends (worker.callbacks)
    callback_url: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty")
        if "\x00" in value:
            raise ValueError("the prompt contains a NUL byte")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"the prompt has {len(value)} characters; the limit is {MAX_PROMPT_CHARS}"
            )
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> ImageSize:
        return parse_size(value)

    @field_validator("quality")
    @classmethod
    def _quality(cls, value: str) -> str:
        return _one_of("quality", value, QUALITIES)

    @field_validator("output_format")
    @classmethod
    def _format(cls, value: str) -> str:
        return _one_of("output format", value, OUTPUT_FORMATS)

    @field_validator("num_images")
    @classmethod
    def _num_images(cls, value: int) -> int:
        if not 1 <= value <= MAX_NUM_IMAGES:
            raise ValueError(f"num_images must be between 1 and {MAX_NUM_IMAGES}")
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not (0 < len(value.strip()) <= MAX_IDEMPOTENCY_KEY_CHARS):
            raise ValueError(
                f"the idempotency key must have 1 to {MAX_IDEMPOTENCY_KEY_CHARS} chars"
            )
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or len(value) > 2000:
            raise ValueError("the callback URL must be an http(s) URL of at most 2000 chars")
        return value

    def params(self) -> dict[str, Any]:
        """The model inputs besides the prompt, as stored in ``jobs.params`` and sent to fal."""
        return self.model_dump(exclude={"prompt", "idempotency_key", "callback_url"})


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(allowed)}")
    return value


def validate_request(**fields: Any) -> JobRequest:
    """Build a JobRequest or raise JobRequestError with every problem spelled out."""
    try:
        return JobRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise JobRequestError(f"invalid job request: {text}", problems) from None


def _problem(err: Any) -> dict[str, str]:
    where = ".".join(str(p) for p in err["loc"]) or "request"
    return {"field": where, "message": str(err["msg"]).removeprefix("Value error, ")}
