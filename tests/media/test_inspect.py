"""worker.media.inspect: the format by content and the size from the header alone."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from imagegen.worker.errors import BadImage
from imagegen.worker.media.inspect import ImageInfo, inspect_image


def _image_bytes(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR claiming ``width`` x ``height`` and no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("fmt", "expected", "content_type", "extension"),
    [
        ("PNG", "png", "image/png", "png"),
        ("JPEG", "jpeg", "image/jpeg", "jpg"),
        ("WEBP", "webp", "image/webp", "webp"),
    ],
)
def test_accepted_formats_with_their_size(
    fmt: str, expected: str, content_type: str, extension: str, tmp_path: Path
) -> None:
    data = _image_bytes(fmt, (64, 48))
    info = inspect_image(io.BytesIO(data))
    assert info == ImageInfo(expected, content_type, 64, 48)
    assert info.extension == extension
    # By content, never by name: a PNG called .jpg is a PNG; a path works as a stream does.
    misnamed = tmp_path / "picture.gif"
    misnamed.write_bytes(data)
    assert inspect_image(misnamed) == info


def test_stream_left_where_it_was() -> None:
    stream = io.BytesIO(_image_bytes("PNG"))
    stream.seek(5)
    inspect_image(stream)
    assert stream.tell() == 5


def test_gif_is_named() -> None:
    with pytest.raises(BadImage) as caught:
        inspect_image(io.BytesIO(_image_bytes("GIF", mode="P")), label="input image 2")
    assert str(caught.value) == (
        "input image 2 is not a PNG, JPEG or WebP image (it looks like a GIF image)"
    )
    assert caught.value.retryable is False


def test_text_renamed_png(tmp_path: Path) -> None:
    fake = tmp_path / "cat.png"
    fake.write_text("<!DOCTYPE html><html><body>Access denied</body></html>\n")
    with pytest.raises(
        BadImage,
        match=r"^the image is not a PNG, JPEG or WebP image \(it looks "
        r"like an HTML page\)$",
    ):
        inspect_image(fake)
    fake.write_text("just some words\n")
    with pytest.raises(BadImage, match=r"\(it looks like text\)$"):
        inspect_image(fake)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"^the image is not a PNG, JPEG or WebP image \(it looks like an empty file\)$"),
        (bytes(range(256)) * 4, r"^the image is not a PNG, JPEG or WebP image$"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIH", r"^the image is a damaged or truncated PNG"),
        (_image_bytes("JPEG")[:20], r"^the image is (a damaged or truncated JPEG|not a readable)"),
    ],
)
def test_garbage_and_truncated(data: bytes, message: str) -> None:
    with pytest.raises(BadImage, match=message):
        inspect_image(io.BytesIO(data))


def test_dimensions_over_the_limits_without_allocating() -> None:
    wide = _png_header(20_000, 16)  # 320,000 pixels: under Pillow's bomb limit
    assert inspect_image(io.BytesIO(wide)) == ImageInfo("png", "image/png", 20_000, 16)
    with pytest.raises(BadImage, match=r"^the image is 20000x16 pixels; the limit is 8192 pixels"):
        inspect_image(io.BytesIO(wide), max_side=8192)
    with pytest.raises(BadImage, match=r"is 20000x16 \(320,000 pixels\); the limit is 100,000$"):
        inspect_image(io.BytesIO(wide), max_pixels=100_000)
    assert inspect_image(io.BytesIO(wide), max_side=20_000, max_pixels=320_000).width == 20_000


def test_decompression_bomb() -> None:
    huge = _png_header(1_000_000, 1_000_000)  # 10^12 pixels, a 60-byte file
    with pytest.raises(BadImage, match=r"has more pixels than are safe to decode"):
        inspect_image(io.BytesIO(huge))


def test_between_pillow_warning_and_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Over MAX_IMAGE_PIXELS but under twice it Pillow only warns; refused either way, and
    # whether or not the warning filters make that warning an exception.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    data = _png_header(150, 100)
    with pytest.raises(BadImage, match=r"over 10,000\)$"):
        inspect_image(io.BytesIO(data))  # pytest's filterwarnings=error: raised inside open
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadImage, match=r"over 10,000\)$"):
            inspect_image(io.BytesIO(data))


def test_zero_size() -> None:
    with pytest.raises(BadImage):
        inspect_image(io.BytesIO(_png_header(0, 10)))
