"""The shipped price table and its lookups; a missing entry is PriceUnknown, never a guess."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from imagegen.worker.constants import IMAGE_SIZE_PRESETS, QUALITIES
from imagegen.worker.cost.estimate import PRESET_SIZES, resolve_size
from imagegen.worker.cost.price_table import DEFAULT_PRICE_TABLE, PriceTable
from imagegen.worker.errors import ConfigurationError, ImagegenError, PriceUnknown

T2I, EDIT = "openai/gpt-image-2", "openai/gpt-image-2/edit"
# ezkit's table (prices.toml's source), USD per image at 1K
HEAD = '[size_buckets]\n1k = 10\n[models."m".per_image]\n'
AT_1K = {"low": Decimal("0.006"), "medium": Decimal("0.053"), "high": Decimal("0.211")}


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def test_shipped_table_says_its_source_date_and_that_it_is_an_estimate() -> None:
    text = DEFAULT_PRICE_TABLE.read_text()
    assert "ESTIMATES ONLY" in text
    assert "https://ezkit.app/ai-image/gpt-image-2/fal" in text
    assert "2026-12-04" in text


def test_every_preset_has_a_size() -> None:
    assert set(PRESET_SIZES) == set(IMAGE_SIZE_PRESETS)


@pytest.mark.parametrize("model", [T2I, EDIT])
@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("preset", IMAGE_SIZE_PRESETS)
def test_every_preset_and_quality_is_priced(
    table: PriceTable, model: str, quality: str, preset: str
) -> None:
    # every preset is at most 1024x1024, so in the 1k bucket; auto is priced as high
    width, height = resolve_size(preset)
    assert table.bucket(width, height) == "1k"
    expected = AT_1K["high" if quality == "auto" else quality]
    assert table.image_price(model, quality, width, height) == expected


@pytest.mark.parametrize(
    ("size", "bucket", "high"),
    [
        ((1024, 640), "1k", "0.211"),  # fal's smallest custom size
        ((1024, 1024), "1k", "0.211"),
        ((1024, 1040), "2k", "0.428"),  # one row over 1K
        ((1536, 1024), "2k", "0.428"),
        ((2048, 2048), "2k", "0.428"),
        ((2048, 2064), "4k", "0.565"),
        ((3840, 2160), "4k", "0.565"),  # fal's largest
    ],
)
def test_size_buckets(table: PriceTable, size: tuple[int, int], bucket: str, high: str) -> None:
    assert table.bucket(*size) == bucket
    assert table.image_price(T2I, "high", *size) == Decimal(high)


def test_the_shipped_table_has_no_gaps(table: PriceTable) -> None:
    assert table.gaps([T2I, EDIT], QUALITIES) == []


def test_gaps_name_every_missing_entry(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        "[size_buckets]\n1k = 1048576\n2k = 4194304\n"
        + '[models."m".per_image]\nlow = { 1k = 0.01 }\n'
    )
    assert PriceTable.load(path).gaps(["m", "n"], ["low"]) == ["m low 2k", "n low 1k", "n low 2k"]


def test_input_image_price(table: PriceTable) -> None:
    assert table.input_price(EDIT) == Decimal("0.012")
    assert table.input_price(T2I) == Decimal(0)


@pytest.mark.parametrize(
    ("model", "quality", "size", "names"),
    [
        ("fal-ai/flux/dev", "high", (1024, 1024), "no prices for model 'fal-ai/flux/dev'"),
        (T2I, "ultra", (1024, 1024), "no 'ultra' quality"),
        (T2I, "high", (4096, 4096), "no size bucket"),
    ],
)
def test_missing_entry_is_price_unknown(
    table: PriceTable, model: str, quality: str, size: tuple[int, int], names: str
) -> None:
    with pytest.raises(PriceUnknown) as raised:
        table.image_price(model, quality, *size)
    assert isinstance(raised.value, ImagegenError)
    assert names in str(raised.value)
    assert str(DEFAULT_PRICE_TABLE) in str(raised.value)


def test_a_table_from_a_path_with_a_hole(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        "[size_buckets]\n1k = 1048576\n2k = 4194304\n"
        '[models."m"]\nper_input_image = 0.5\n'
        '[models."m".per_image]\nlow = { 1k = 0.01 }\n'
    )
    table = PriceTable.load(path)
    assert table.image_price("m", "low", 1024, 1024) == Decimal("0.01")
    assert table.input_price("m") == Decimal("0.5")
    with pytest.raises(PriceUnknown, match=r"no price for 'm' 'low' at size bucket '2k'"):
        table.image_price("m", "low", 1536, 1024)
    with pytest.raises(PriceUnknown, match="no 'auto' quality"):  # no alias in this file
        table.image_price("m", "auto", 1024, 1024)
    with pytest.raises(PriceUnknown):
        table.input_price("other")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[size_buckets", "cannot read"),
        ('[models."m".per_image]\nlow = { 1k = 0.01 }\n', "no [size_buckets]"),
        ('[size_buckets]\n1k = "big"\n', "not a pixel count"),
        (HEAD + 'low = { 1k = "0.01" }\n', "not a number"),
        (HEAD + "low = { 1k = -0.01 }\n", "not a price"),
        (HEAD + "low = 0.01\n", "malformed"),
    ],
)
def test_malformed_tables_are_configuration_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        PriceTable.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the price table"):
        PriceTable.load(tmp_path / "absent.toml")
