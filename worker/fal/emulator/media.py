"""Output sizing for edits and the emulator's own `x-fal-billable-units` formula."""

from __future__ import annotations

import math
from decimal import Decimal

# GPT Image 2's documented limits on an output size (fal's model page).
EDGE_STEP = 16
MAX_OUTPUT_EDGE = 3840
MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400
MAX_RATIO = 3

# The emulator's own units (not fal's pricing): per image per started megapixel, by quality,
# plus a flat amount per input image of an edit (fal bills input image tokens too).
UNITS_PER_MEGAPIXEL = {"low": Decimal("0.01"), "medium": Decimal("0.04"), "high": Decimal("0.16")}
UNITS_PER_INPUT = Decimal("0.005")
DEFAULT_QUALITY = "high"  # fal's default; `auto` and unknown values are billed as high


def _step(value: float, scale: float) -> int:
    """A multiple of 16: up when the area grew, down when it shrank, else the nearest."""
    steps = value / EDGE_STEP
    if scale > 1.0:
        rounded = math.ceil(steps)
    elif scale < 1.0:
        rounded = math.floor(steps)
    else:
        rounded = math.floor(steps + 0.5)
    return max(EDGE_STEP, rounded * EDGE_STEP)


def edit_output_size(width: int, height: int) -> tuple[int, int]:
    """An input's size brought within GPT Image 2's limits, sides multiples of 16.

    The aspect ratio is capped at 3:1, the area scaled into [MIN_PIXELS, MAX_PIXELS] and the
    longer edge to MAX_OUTPUT_EDGE, keeping the shape; sides then go to the nearest multiple
    of 16 (up when the area had to grow, down when it had to shrink, so it stays in bounds).
    """
    w, h = float(max(width, 1)), float(max(height, 1))
    w, h = min(w, h * MAX_RATIO), min(h, w * MAX_RATIO)
    scale = 1.0
    if w * h < MIN_PIXELS:
        scale = math.sqrt(MIN_PIXELS / (w * h))
    elif w * h > MAX_PIXELS:
        scale = math.sqrt(MAX_PIXELS / (w * h))
    scale = min(scale, MAX_OUTPUT_EDGE / max(w, h))
    return _step(w * scale, scale), _step(h * scale, scale)


def billable_units(quality: str, width: int, height: int, num_images: int, inputs: int) -> str:
    """`num_images * rate[quality] * ceil(w*h / 2**20) + 0.005 * inputs`, as a decimal string."""
    rate = UNITS_PER_MEGAPIXEL.get(quality, UNITS_PER_MEGAPIXEL[DEFAULT_QUALITY])
    megapixels = math.ceil(width * height / 2**20)
    units = num_images * rate * megapixels + UNITS_PER_INPUT * inputs
    return format(units.normalize(), "f")
