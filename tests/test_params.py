"""Unit tests for worker.jobs.params.validate_request: what a job may ask for."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from imagegen.worker.constants import IMAGE_SIZE_PRESETS, MAX_PROMPT_CHARS
from imagegen.worker.errors import ImagegenError, JobRequestError
from imagegen.worker.jobs.params import JobRequest
from imagegen.worker.jobs.params import validate_request as _validate
from imagegen.worker.settings import Settings

SETTINGS = Settings(IMAGEGEN_CALLBACK_SECRET="s3cret")


def validate_request(**fields: Any) -> JobRequest:
    key = fields.pop("idempotency_key", None)
    return _validate(fields, idempotency_key=key, settings=SETTINGS)


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
    ["3840x2160", "3072x1024", "1024x3072", "1024x640", "1280x512", "3840x1280"],
    ids=["most-pixels", "exactly-3:1", "exactly-1:3", "fewest-pixels", "fewest-2.5:1", "3:1-edge"],
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
    ("too-few-pixels", {"image_size": "16x16"}, "image_size"),
    ("just-too-few-pixels", {"image_size": "1008x640"}, "image_size"),
    ("too-many-pixels", {"image_size": "3840x3840"}, "image_size"),
    ("just-too-many-pixels", {"image_size": "3840x2176"}, "image_size"),
    ("unicode-digits", {"image_size": "\u0661\u0660\u0662\u0664x1024"}, "image_size"),
    ("esc-prompt", {"prompt": "a \x1b[2J fox"}, "prompt"),
    ("cr-prompt", {"prompt": "a\rfox"}, "prompt"),
    ("c1-csi-prompt", {"prompt": "a\x9b31m fox"}, "prompt"),
    ("del-prompt", {"prompt": "a\x7f fox"}, "prompt"),
    ("surrogate-prompt", {"prompt": "caf\udce9"}, "prompt"),
    ("bytes-prompt", {"prompt": b"a fox"}, "prompt"),
    ("nan-deadline", {"deadline_s": float("nan")}, "deadline_s"),
    ("inf-deadline", {"deadline_s": float("inf")}, "deadline_s"),
    ("huge-deadline", {"deadline_s": 1e12}, "deadline_s"),
    ("bool-deadline", {"deadline_s": True}, "deadline_s"),
    ("str-deadline", {"deadline_s": "60"}, "deadline_s"),
    ("zero-deadline", {"deadline_s": 0}, "deadline_s"),
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
    ("esc-key", {"idempotency_key": "k\x1b[0m"}, "idempotency_key"),
    ("non-ascii-key", {"idempotency_key": "cl\u00e9"}, "idempotency_key"),
    ("padded-key", {"idempotency_key": " k "}, "idempotency_key"),
    ("int-key", {"idempotency_key": 42}, "idempotency_key"),
    ("ftp-callback", {"callback_url": "ftp://example.com/x"}, "callback_url"),
    ("loopback-callback", {"callback_url": "http://127.0.0.1:8000/x"}, "callback_url"),
    ("localhost-callback", {"callback_url": "http://localhost/x"}, "callback_url"),
    ("metadata-callback", {"callback_url": "http://169.254.169.254/latest"}, "callback_url"),
    ("private-callback", {"callback_url": "https://10.1.2.3/x"}, "callback_url"),
    ("decimal-ip-callback", {"callback_url": "http://2130706433/x"}, "callback_url"),
    ("mapped-v6-callback", {"callback_url": "http://[::ffff:127.0.0.1]/x"}, "callback_url"),
    ("userinfo-callback", {"callback_url": "https://u:p@example.com/x"}, "callback_url"),
    ("space-callback", {"callback_url": "https://example.com/a b"}, "callback_url"),
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
        ({"image_size": "16x16"}, "total pixels must be 655,360"),
        ({"image_size": "3840x3840"}, "8,294,400"),
        ({"prompt": "caf\udce9"}, "prompt is not valid UTF-8"),
        ({"prompt": "a\x1bb"}, "U+001B (ESC)"),
        ({"deadline_s": float("inf")}, "at most 604800"),
        ({"deadline_s": float("nan")}, "above 0"),
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


def test_nul_is_named_in_the_message() -> None:
    with pytest.raises(JobRequestError, match="U\\+0000 \\(NUL\\)"):
        validate_request(prompt="a\x00b")


def test_messages_never_echo_control_characters_or_surrogates() -> None:
    hostile = "\x1b]0;pwned\x07\udce9" * 3
    for field in ("quality", "output_format", "image_size"):
        with pytest.raises(JobRequestError) as info:
            validate_request(prompt="p", **{field: hostile})
        text = str(info.value)
        assert "\x1b" not in text and "\udce9" not in text and "\x07" not in text
        text.encode("utf-8")  # the 422 body must encode


def test_a_callback_needs_the_secret() -> None:
    fields = {"prompt": "p", "callback_url": "https://example.com/hook"}
    assert _validate(fields, settings=SETTINGS).callback_url == fields["callback_url"]
    with pytest.raises(JobRequestError, match="IMAGEGEN_CALLBACK_SECRET is not set") as info:
        _validate(fields, settings=Settings())
    assert [p["field"] for p in info.value.problems] == ["callback_url"]


def test_private_callbacks_when_allowed() -> None:
    allowed = Settings(IMAGEGEN_CALLBACK_SECRET="s", IMAGEGEN_CALLBACK_ALLOW_PRIVATE="true")
    url = "http://127.0.0.1:8000/hook"
    assert _validate({"prompt": "p", "callback_url": url}, settings=allowed).callback_url == url
    with pytest.raises(JobRequestError, match="IMAGEGEN_CALLBACK_ALLOW_PRIVATE"):
        _validate({"prompt": "p", "callback_url": url}, settings=SETTINGS)


@pytest.mark.parametrize("value", [1, 1.5, 604800])
def test_deadline_accepts_ints_and_floats_up_to_a_week(value: float) -> None:
    assert validate_request(prompt="p", deadline_s=value).deadline_s == value


def test_the_key_is_not_a_body_field() -> None:
    with pytest.raises(JobRequestError, match="Idempotency-Key header"):
        _validate({"prompt": "p", "idempotency_key": "k"}, settings=SETTINGS)
