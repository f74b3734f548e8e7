"""The estimated cost of a job from its parameters, by the configured price table.

An estimate, not a bill: per output image (model, quality, size bucket) x num_images, plus a
price per input image for edits (images, mask and consent reference all go to fal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from imagegen.worker.cost.billed import usd
from imagegen.worker.cost.price_table import PriceTable
from imagegen.worker.errors import PriceUnknown

#: fal's image_size presets in pixels (fal's generic preset dimensions; GPT Image 2's own
#: output for a preset is not documented, so these are what the estimate assumes)
PRESET_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

#: fal's defaults, for params that leave a field out
DEFAULT_SIZE = "landscape_4_3"
DEFAULT_QUALITY = "high"
_WXH = re.compile(r"^\s*([0-9]{1,6})\s*[xX\u00d7]\s*([0-9]{1,6})\s*$")


def resolve_size(image_size: Any) -> tuple[int, int]:
    """(width, height) of a preset name, ``WIDTHxHEIGHT`` or ``{"width", "height"}``."""
    if isinstance(image_size, str):
        if image_size in PRESET_SIZES:
            return PRESET_SIZES[image_size]
        match = _WXH.match(image_size)
        if match:
            return int(match[1]), int(match[2])
    elif isinstance(image_size, Mapping):
        width, height = image_size.get("width"), image_size.get("height")
        if isinstance(width, int) and isinstance(height, int) and _whole(width) and _whole(height):
            return width, height
    raise PriceUnknown(f"cannot estimate the cost of image_size {str(image_size)[:60]!r}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def estimate_cost(
    table: PriceTable, model: str, params: Mapping[str, Any], *, input_images: int = 0
) -> Decimal:
    """USD estimate of one submission of a job with these params (``jobs.params``' shape).

    ``input_images``: how many images the edit sends fal (image_urls, mask, consent).
    Raises PriceUnknown when the table has no entry for it: the job must then be refused.
    """
    quality = params.get("quality", DEFAULT_QUALITY)
    num_images = params.get("num_images", 1)
    if not isinstance(quality, str):
        raise PriceUnknown(f"cannot estimate the cost of quality {quality!r}")
    if not _whole(num_images):
        raise PriceUnknown(f"cannot estimate the cost of num_images {num_images!r}")
    if isinstance(input_images, bool) or not isinstance(input_images, int) or input_images < 0:
        raise ValueError(f"input_images must be a count, not {input_images!r}")
    width, height = resolve_size(params.get("image_size", DEFAULT_SIZE))
    per_image = table.image_price(model, quality, width, height)
    inputs = table.input_price(model) * input_images if input_images else Decimal(0)
    return usd(per_image * num_images + inputs)
