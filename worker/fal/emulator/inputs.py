"""The edit endpoint's input: schema checks at submit, then loading each image as a runner would.

fal checks a request's schema when it is submitted (422 on the POST, pydantic-style `detail[]`)
and downloads input files only when a runner starts, so a URL that 404s or is not an image is a
model error: the request COMPLETES and its result GET answers 422 (see docs/emulator.md).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import ssl
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

EDIT_PATH = "edit"
MAX_IMAGE_URLS = 16
MAX_INPUT_BYTES = 50 * 1024 * 1024
FETCH_TIMEOUT_S = 5.0
_DATA_URI = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,(?P<data>.*)", re.DOTALL)
_INPUT_SHOWN = 120  # characters of an input echoed back in `detail[].input`
Detail = dict[str, Any]


def detail(loc: list[str | int], msg: str, kind: str, value: Any, **ctx: Any) -> Detail:
    """One pydantic-style entry of a 422 `detail` list, with fal's documentation link."""
    entry: Detail = {"loc": ["body", *loc], "msg": msg, "type": kind}
    entry["url"] = f"https://docs.fal.ai/errors#{kind}"
    if ctx:
        entry["ctx"] = ctx
    shown = value[:_INPUT_SHOWN] if isinstance(value, str) else value
    entry["input"] = shown
    return entry


def _url_problem(loc: list[str | int], value: Any) -> Detail | None:
    if not isinstance(value, str):
        return detail(loc, "Input should be a valid string", "string_type", value)
    if value.startswith(("http://", "https://")) and len(value) > len("https://"):
        return None
    if value.startswith("data:"):
        if _DATA_URI.fullmatch(value):
            return None
        msg = "Value error, a data URI must look like data:image/<type>;base64,<data>"
        return detail(loc, msg, "value_error", value)
    schemes = "'http', 'https' or 'data'"
    msg = f"URL scheme should be {schemes}"
    return detail(loc, msg, "url_scheme", value, expected_schemes=schemes)


def _list_problems(value: Any) -> list[Detail]:
    loc: list[str | int] = ["image_urls"]
    if value is None:
        return [detail(loc, "Field required", "missing", value)]
    if not isinstance(value, list):
        return [detail(loc, "Input should be a valid list", "list_type", value)]
    if not value:
        msg = "List should have at least 1 item after validation, not 0"
        return [detail(loc, msg, "sequence_too_short", value, min_length=1)]
    if len(value) > MAX_IMAGE_URLS:
        msg = f"List should have at most {MAX_IMAGE_URLS} items after validation, not {len(value)}"
        return [detail(loc, msg, "sequence_too_long", len(value), max_length=MAX_IMAGE_URLS)]
    found = (_url_problem(["image_urls", i], item) for i, item in enumerate(value))
    return [problem for problem in found if problem is not None]


def edit_problems(payload: dict[str, Any]) -> list[Detail]:
    """Schema errors of an edit request, in field order; empty when it is valid."""
    problems: list[Detail] = []
    prompt = payload.get("prompt")
    if "prompt" not in payload:
        problems.append(detail(["prompt"], "Field required", "missing", None))
    elif not isinstance(prompt, str):
        problems.append(detail(["prompt"], "Input should be a valid string", "string_type", prompt))
    problems += _list_problems(payload.get("image_urls"))
    mask = payload.get("mask_url")
    if mask is not None:
        problem = _url_problem(["mask_url"], mask)
        problems += [] if problem is None else [problem]
    return problems


@dataclass(frozen=True)
class LoadedInputs:
    """What the runner found: the first image's size, or the 422 detail for the first failure."""

    first_size: tuple[int, int] | None
    error: list[Detail] | None
    count: int


class _LoadError(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _tls() -> ssl.SSLContext:
    # The system store plus SSL_CERT_FILE, so an input served over HTTPS by a local test
    # server whose CA is in SSL_CERT_FILE loads as it would from a public host.
    return ssl.create_default_context()


def _download(url: str, timeout_s: float) -> bytes:
    try:
        with (
            httpx.Client(timeout=timeout_s, verify=_tls(), trust_env=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise _LoadError("file_download_error", f"HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_INPUT_BYTES:
                    raise _LoadError("file_too_large", f"larger than {MAX_INPUT_BYTES} bytes")
            return bytes(data)
    except httpx.HTTPError as error:
        raise _LoadError("file_download_error", type(error).__name__) from error


def _read(url: str, timeout_s: float) -> bytes:
    match = _DATA_URI.fullmatch(url)
    if match is None:
        return _download(url, timeout_s)
    try:
        return base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise _LoadError("image_load_error", "the data URI is not valid base64") from error


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image Pillow can decode; _LoadError otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return int(image.width), int(image.height)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise _LoadError("image_load_error", "it is not an image Pillow can decode") from error


def _failure(loc: list[str | int], url: str, error: _LoadError) -> list[Detail]:
    name = "".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc)
    msg = f"Failed to load the input image {name}: {error.reason}"
    return [detail(loc, msg, error.kind, url)]


def load_inputs(payload: dict[str, Any], timeout_s: float = FETCH_TIMEOUT_S) -> LoadedInputs:
    """Fetch and decode every input of a schema-valid edit, stopping at the first failure."""
    urls: list[str] = payload["image_urls"]
    items: list[tuple[list[str | int], str]] = [(["image_urls", i], u) for i, u in enumerate(urls)]
    mask = payload.get("mask_url")
    if isinstance(mask, str):
        items.append((["mask_url"], mask))
    first: tuple[int, int] | None = None
    for loc, url in items:
        try:
            size = image_size(_read(url, timeout_s))
        except _LoadError as error:
            return LoadedInputs(first, _failure(loc, url, error), len(items))
        first = first or size
    return LoadedInputs(first, None, len(items))
