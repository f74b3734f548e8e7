"""The configured per-image price table (``prices.toml`` beside this module, or a given path).

ESTIMATES ONLY: fal bills GPT Image 2 by tokens and published per-image prices disagree, so
this table serves the estimate at enqueue and budgets before fal answers; the billed cost is
fal's units x unit price (``worker.cost.billed``). A missing entry raises ``PriceUnknown``:
a job is refused with a clear error, never priced at a guess.

File shape (see prices.toml)::

    [size_buckets]            # bucket = largest total pixels it covers
    1k = 1048576
    [quality_aliases]         # a quality priced as another
    auto = "high"
    [models."openai/gpt-image-2"]
    per_input_image = 0.012   # optional, edits
    [models."openai/gpt-image-2".per_image]
    low = { 1k = 0.006 }
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from imagegen.worker.errors import ConfigurationError, PriceUnknown

#: the table shipped with imagegen (its source and date are in its header comment)
DEFAULT_PRICE_TABLE = Path(__file__).with_name("prices.toml")


@dataclass(frozen=True)
class PriceTable:
    """USD per image by (model, quality, size bucket), plus USD per input image by model."""

    path: str
    #: (bucket name, largest total pixels it covers), smallest first
    buckets: tuple[tuple[str, int], ...]
    quality_aliases: Mapping[str, str]
    per_image: Mapping[str, Mapping[str, Mapping[str, Decimal]]]
    per_input_image: Mapping[str, Decimal]

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """Read and check a table file (the shipped one by default); ConfigurationError if bad."""
        where = Path(path) if path is not None else DEFAULT_PRICE_TABLE
        try:
            data = tomllib.loads(where.read_text(encoding="utf-8"), parse_float=Decimal)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read the price table {where}: {exc}") from exc
        try:
            return _parse(str(where), data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(f"the price table {where} is malformed: {exc}") from exc

    def bucket(self, width: int, height: int) -> str:
        """The smallest size bucket covering ``width x height`` pixels."""
        pixels = width * height
        for name, most in self.buckets:
            if pixels <= most:
                return name
        raise PriceUnknown(
            f"no size bucket in the price table {self.path} covers {width}x{height} "
            f"({pixels:,} pixels)"
        )

    def image_price(self, model: str, quality: str, width: int, height: int) -> Decimal:
        """USD per output image; PriceUnknown naming the missing entry."""
        prices = self.per_image.get(model)
        if prices is None:
            raise PriceUnknown(f"the price table {self.path} has no prices for model {model!r}")
        priced_as = self.quality_aliases.get(quality, quality)
        by_bucket = prices.get(priced_as)
        if by_bucket is None:
            raise PriceUnknown(
                f"the price table {self.path} has no {priced_as!r} quality for {model!r}"
            )
        bucket = self.bucket(width, height)
        price = by_bucket.get(bucket)
        if price is None:
            raise PriceUnknown(
                f"the price table {self.path} has no price for {model!r} {priced_as!r} "
                f"at size bucket {bucket!r} ({width}x{height})"
            )
        return price

    def gaps(self, models: Iterable[str], qualities: Iterable[str]) -> list[str]:
        """Every (model, quality, bucket) the table cannot price, for a check at start-up."""
        missing = []
        for model, quality in itertools.product(models, qualities):
            for bucket, most in self.buckets:
                try:
                    self.image_price(model, quality, 1, most)
                except PriceUnknown:
                    missing.append(f"{model} {quality} {bucket}")
        return missing

    def input_price(self, model: str) -> Decimal:
        """USD per input image (edits); 0 when the model's entry gives none."""
        if model not in self.per_image:
            raise PriceUnknown(f"the price table {self.path} has no prices for model {model!r}")
        return self.per_input_image.get(model, Decimal(0))


def _amount(where: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(f"{where} is {value!r}, not a number")
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{where} is {value!r}, not a price (a number >= 0)")
    return amount


def _parse(path: str, data: dict[str, Any]) -> PriceTable:
    buckets = []
    for name, most in dict(data.get("size_buckets", {})).items():
        if isinstance(most, bool) or not isinstance(most, int) or most <= 0:
            raise ValueError(f"size_buckets.{name} is {most!r}, not a pixel count")
        buckets.append((str(name), most))
    if not buckets:
        raise ValueError("it has no [size_buckets]")
    aliases = {str(k): str(v) for k, v in dict(data.get("quality_aliases", {})).items()}
    per_image: dict[str, dict[str, dict[str, Decimal]]] = {}
    per_input: dict[str, Decimal] = {}
    for model, entry in dict(data.get("models", {})).items():
        per_image[model] = {
            str(quality): {
                str(b): _amount(f"{model} {quality} {b}", v) for b, v in dict(row).items()
            }
            for quality, row in dict(entry.get("per_image", {})).items()
        }
        if "per_input_image" in entry:
            per_input[model] = _amount(f"{model} per_input_image", entry["per_input_image"])
    ordered = tuple(sorted(buckets, key=lambda b: b[1]))
    return PriceTable(path, ordered, aliases, per_image, per_input)
