"""Estimated cost of a job from its params, by the shipped price table."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from imagegen.worker.cost.estimate import estimate_cost, resolve_size
from imagegen.worker.cost.price_table import PriceTable
from imagegen.worker.errors import PriceUnknown

T2I, EDIT = "openai/gpt-image-2", "openai/gpt-image-2/edit"


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


@pytest.mark.parametrize(
    ("model", "params", "inputs", "usd"),
    [
        # fal's defaults: landscape_4_3, high, 1 image
        (T2I, {}, 0, "0.211"),
        (T2I, {"image_size": "square_hd", "quality": "low", "num_images": 1}, 0, "0.006"),
        (T2I, {"image_size": "portrait_16_9", "quality": "medium", "num_images": 4}, 0, "0.212"),
        (T2I, {"image_size": "1024x1536", "quality": "high", "num_images": 2}, 0, "0.856"),
        (T2I, {"image_size": {"width": 3840, "height": 2160}, "quality": "low"}, 0, "0.016"),
        (T2I, {"image_size": "landscape_4_3", "quality": "auto", "num_images": 1}, 0, "0.211"),
        # an edit: 2 images at 2K medium + 3 inputs (2 images and a mask) at 0.012
        (EDIT, {"image_size": "2048x1152", "quality": "medium", "num_images": 2}, 3, "0.25"),
        (EDIT, {"image_size": "square_hd", "quality": "low"}, 1, "0.018"),
    ],
)
def test_examples(
    table: PriceTable, model: str, params: dict[str, Any], inputs: int, usd: str
) -> None:
    got = estimate_cost(table, model, params, input_images=inputs)
    assert got == Decimal(usd)
    assert got.as_tuple().exponent == -6  # money to 6 places


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("square", (512, 512)),
        ("landscape_16_9", (1024, 576)),
        ("1536x1024", (1536, 1024)),
        (" 1536 X 1024 ", (1536, 1024)),
        ({"width": 1024, "height": 1536}, (1024, 1536)),
    ],
)
def test_resolve_size(value: Any, size: tuple[int, int]) -> None:
    assert resolve_size(value) == size


@pytest.mark.parametrize(
    "params",
    [
        {"image_size": "huge"},
        {"image_size": {"width": "1024", "height": 1024}},
        {"image_size": {"width": True, "height": 1024}},
        {"image_size": [1024, 1024]},
        {"quality": "ultra"},
        {"quality": None},
        {"num_images": 0},
        {"num_images": "2"},
        {"image_size": "4096x4096"},
    ],
)
def test_unpriceable_params_are_price_unknown(table: PriceTable, params: dict[str, Any]) -> None:
    with pytest.raises(PriceUnknown):
        estimate_cost(table, T2I, params)


def test_unknown_model_is_price_unknown(table: PriceTable) -> None:
    with pytest.raises(PriceUnknown, match="no prices for model 'openai/gpt-image-9'"):
        estimate_cost(table, "openai/gpt-image-9", {})


def test_input_count_must_be_a_count(table: PriceTable) -> None:
    with pytest.raises(ValueError):
        estimate_cost(table, EDIT, {}, input_images=-1)
