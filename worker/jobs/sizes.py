"""Image sizes as a job may ask for them: fal's presets, WIDTHxHEIGHT, {width, height}."""

from __future__ import annotations

import re
from typing import Any

from imagegen.worker.constants import (
    IMAGE_SIZE_PRESETS,
    MAX_ASPECT_RATIO,
    MAX_EDGE_PX,
    MAX_PIXELS,
    MIN_PIXELS,
    SIZE_MULTIPLE_PX,
)
from imagegen.worker.jobs.input_rules import shown

_SIZE_RE = re.compile(r"^\s*([0-9]{1,6})\s*[xX\u00d7]\s*([0-9]{1,6})\s*$")
ImageSize = str | dict[str, int]


def parse_size(value: Any) -> ImageSize:
    """A preset name, ``WIDTHxHEIGHT``, a (w, h) pair or ``{"width", "height"}``."""
    if isinstance(value, str):
        if value in IMAGE_SIZE_PRESETS:
            return value
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError(
                f"unknown size {shown(value)}: use one of {', '.join(IMAGE_SIZE_PRESETS)} "
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
    """fal's rules for GPT Image 2's custom sizes (presets are fal's own, always valid)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
        raise ValueError("width and height must be whole numbers of pixels")
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    if width % SIZE_MULTIPLE_PX or height % SIZE_MULTIPLE_PX:
        raise ValueError(f"width and height must be multiples of {SIZE_MULTIPLE_PX}")
    if max(width, height) > MAX_EDGE_PX:
        raise ValueError(f"the longest edge must be at most {MAX_EDGE_PX} px")
    if not MIN_PIXELS <= width * height <= MAX_PIXELS:
        raise ValueError(
            f"the total pixels must be {MIN_PIXELS:,} (1024x640) to {MAX_PIXELS:,} "
            f"(3840x2160); {width}x{height} is {width * height:,}"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError("the aspect ratio must be at most 3:1")


SIZE_SCHEMA = {
    "anyOf": [
        {"type": "string", "description": "A preset name or WIDTHxHEIGHT (1024x1536)."},
        {
            "type": "object",
            "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}},
            "required": ["width", "height"],
            "additionalProperties": False,
        },
    ],
    "description": f"A preset ({', '.join(IMAGE_SIZE_PRESETS)}), WIDTHxHEIGHT or "
    "{width, height}: multiples of 16, longest edge 3840, ratio 3:1 at most, "
    f"{MIN_PIXELS:,} to {MAX_PIXELS:,} pixels.",
}
