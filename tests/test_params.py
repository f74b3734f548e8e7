"""Unit tests for worker.params.validate_request: what a job may ask for."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.constants import IMAGE_SIZE_PRESETS, MAX_PROMPT_CHARS
from worker.errors import ImagegenError, JobRequestError
from worker.params import validate_request


def test_default_request_params() -> None:
    req = validate_request(prompt="a red fox")
    assert req.prompt == "a red fox"
    assert req.params() == {
        "image_size": "landscape_4_3",
        "quality": "high",
        "num_images": 1,
        "output_format": "png",
    }


def test_none_fields_fall_back_to_defaults() -> None:
    req = validate_request(prompt="a fox", image_size=None, quality=None, num_images=None)
    assert req.params()["image_size"] == "landscape_4_3"
    assert req.params()["quality"] == "high"
    assert req.params()["num_images"] == 1


@pytest.mark.parametrize("preset", IMAGE_SIZE_PRESETS)
def test_presets_accepted(preset: str) -> None:
    assert validate_request(prompt="p", image_size=preset).params()["image_size"] == preset


@pytest.mark.parametrize(
    "size",
    [
        "1024x1536",
        "1024X1536",
        " 1024 x 1536 ",
        "1024\u00d71536",
        {"width": 1024, "height": 1536},
        (1024, 1536),
        [1024, 1536],
    ],
    ids=["str", "upper-X", "spaces", "times-sign", "dict", "tuple", "list"],
)
def test_custom_sizes_become_width_height(size: Any) -> None:
    params = validate_request(prompt="p", image_size=size).params()
    assert params["image_size"] == {"width": 1024, "height": 1536}


@pytest.mark.parametrize(
    "size",
    ["3840x2160", "3072x1024", "1024x3072", "16x16", "3840x1280"],
    ids=["max-edge", "exactly-3:1", "exactly-1:3", "smallest", "max-edge-3:1"],
)
def test_boundary_sizes_accepted(size: str) -> None:
    w, h = (int(v) for v in size.split("x"))
    params = validate_request(prompt="p", image_size=size).params()
    assert params["image_size"] == {"width": w, "height": h}


def test_every_option_passes_through() -> None:
    req = validate_request(
        prompt="p",
        image_size="square_hd",
        quality="low",
        num_images=4,
        output_format="webp",
        idempotency_key="order-42",
    )
    assert req.params() == {
        "image_size": "square_hd",
        "quality": "low",
        "num_images": 4,
        "output_format": "webp",
    }
    assert req.idempotency_key == "order-42"


@pytest.mark.parametrize(
    "prompt",
    [
        "'; DROP TABLE jobs; --",
        "<script>alert(1)</script>",
        "Robert'); DELETE FROM attempts WHERE 1=1;--",
        "{{7*7}} ${jndi:ldap://x} %s %n",
        "  leading and trailing spaces  ",
        "multi\nline\tprompt \u00e9\u4e2d\U0001f98a",
        "x" * MAX_PROMPT_CHARS,
    ],
    ids=["sql", "html", "sql2", "templates", "spaces", "unicode", "max-length"],
)
def test_odd_prompts_accepted_verbatim(prompt: str) -> None:
    assert validate_request(prompt=prompt).prompt == prompt


REJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("empty-prompt", {"prompt": ""}, "prompt"),
    ("blank-prompt", {"prompt": "  \n\t "}, "prompt"),
    ("nul-prompt", {"prompt": "a\x00b"}, "prompt"),
    ("long-prompt", {"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
    ("non-str-prompt", {"prompt": 42}, "prompt"),
    ("not-multiple-16", {"image_size": "1000x1000"}, "image_size"),
    ("not-multiple-16-dict", {"image_size": {"width": 1024, "height": 1030}}, "image_size"),
    ("edge-too-long", {"image_size": "3856x2048"}, "image_size"),
    ("aspect-too-wide", {"image_size": "3072x1008"}, "image_size"),
    ("aspect-too-tall", {"image_size": (1008, 3072)}, "image_size"),
    ("zero-size", {"image_size": "0x1024"}, "image_size"),
    ("unknown-preset", {"image_size": "landscape_21_9"}, "image_size"),
    ("dict-extra-key", {"image_size": {"width": 16, "height": 16, "depth": 16}}, "image_size"),
    ("float-dims", {"image_size": (1024.0, 1024.0)}, "image_size"),
    ("bool-dims", {"image_size": (True, 16)}, "image_size"),
    ("three-dims", {"image_size": (16, 16, 16)}, "image_size"),
    ("unknown-quality", {"quality": "ultra"}, "quality"),
    ("quality-case", {"quality": "HIGH"}, "quality"),
    ("unknown-format", {"output_format": "gif"}, "output_format"),
    ("zero-images", {"num_images": 0}, "num_images"),
    ("five-images", {"num_images": 5}, "num_images"),
    ("bool-images", {"num_images": True}, "num_images"),
    ("str-images", {"num_images": "2"}, "num_images"),
    ("float-images", {"num_images": 2.0}, "num_images"),
    ("blank-key", {"idempotency_key": "   "}, "idempotency_key"),
    ("long-key", {"idempotency_key": "k" * 201}, "idempotency_key"),
    ("extra-field", {"seed": 42}, "seed"),
]


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [(f, n) for _, f, n in REJECTIONS],
    ids=[i for i, _, _ in REJECTIONS],
)
def test_rejections_name_the_field(fields: dict[str, Any], field_name: str) -> None:
    fields = {"prompt": "a fox", **fields}
    with pytest.raises(JobRequestError) as info:
        validate_request(**fields)
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, ImagegenError)
    assert f"{field_name}:" in str(err)


def test_rejection_lists_every_problem() -> None:
    with pytest.raises(JobRequestError) as info:
        validate_request(prompt="", quality="ultra", num_images=9)
    message = str(info.value)
    for name in ("prompt:", "quality:", "num_images:"):
        assert name in message


def test_missing_prompt_is_rejected() -> None:
    with pytest.raises(JobRequestError, match="prompt"):
        validate_request(quality="high")


def test_rejection_messages_are_specific() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": "a\x00b"}, "NUL"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, str(MAX_PROMPT_CHARS)),
        ({"image_size": "1000x1000"}, "multiples of 16"),
        ({"image_size": "3856x2048"}, "3840"),
        ({"image_size": "3072x1008"}, "3:1"),
        ({"quality": "ultra"}, "'ultra'"),
        ({"num_images": 5}, "between 1 and 4"),
        ({"seed": 1}, "Extra inputs"),
    ]
    for fields, phrase in cases:
        with pytest.raises(JobRequestError) as info:
            validate_request(**{"prompt": "p", **fields})
        assert phrase in str(info.value), (fields, str(info.value))


def test_request_is_immutable() -> None:
    req = validate_request(prompt="p")
    with pytest.raises(ValidationError, match="frozen"):
        req.prompt = "other"  # type: ignore[misc]
    assert req.prompt == "p"
