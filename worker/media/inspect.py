"""Check that bytes are an image we accept, by their content, reading only the header.

Pillow's ``Image.open`` parses the header (format, size) and decodes no pixels, so a 50 MB
file or a decompression bomb costs a few kilobytes of reading. The file name and the
Content-Type a server sent are never trusted: a text file called ``x.png`` is text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from imagegen.worker.errors import BadImage

#: Pillow's format name -> ours. MPO is how Pillow names a JPEG with extra frames (phones).
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
#: Only these parsers ever run on the bytes (MPO comes through the JPEG one).
_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP")
_ACCEPTED = "a PNG, JPEG or WebP image"
_PREFIX_BYTES = 16  # what Pillow's format sniffers look at


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: the format (by content) and the size in pixels."""

    format: str
    content_type: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        """The file name extension for this format ("jpg" for JPEG)."""
        return _EXTENSIONS[self.format]


def inspect_image(
    source: Path | str | os.PathLike[str] | IO[bytes],
    *,
    max_side: int | None = None,
    max_pixels: int | None = None,
    label: str = "the image",
) -> ImageInfo:
    """The format and size of ``source``, or BadImage saying why it is not acceptable.

    A stream is read from its start (it must be seekable) and left where it was.
    ``label`` names the image in messages ("input image 2").
    """
    if isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as fp:
            return inspect_image(fp, max_side=max_side, max_pixels=max_pixels, label=label)
    if not source.seekable():
        raise ValueError("inspect_image needs a seekable stream (Pillow would read it all)")
    position = source.tell()
    try:
        info = _read_header(source, label)
    finally:
        source.seek(position)
    _check_size(info, max_side=max_side, max_pixels=max_pixels, label=label)
    return info


def _read_header(fp: IO[bytes], label: str) -> ImageInfo:
    fp.seek(0)
    try:
        with Image.open(fp, formats=_PILLOW_FORMATS) as image:
            pillow_format = image.format or ""
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # The warning arrives as an exception only under an "error" filter; see _check_size.
        raise BadImage(_too_many_pixels(label)) from None
    except UnidentifiedImageError:
        raise BadImage(_not_accepted(fp, label)) from None
    except Exception as exc:  # Pillow's parsers raise many types for damaged headers
        raise BadImage(
            f"{label} is not a readable PNG, JPEG or WebP image (damaged: {type(exc).__name__})"
        ) from None
    fmt = _FORMATS.get(pillow_format)
    if fmt is None:  # not expected: only the accepted parsers ran
        raise BadImage(f"{label} is not {_ACCEPTED} (it is a {pillow_format} image)")
    return ImageInfo(fmt, _CONTENT_TYPES[fmt], width, height)


def _check_size(
    info: ImageInfo, *, max_side: int | None, max_pixels: int | None, label: str
) -> None:
    size = f"{info.width}x{info.height}"
    pixels = info.width * info.height
    if pixels == 0:
        raise BadImage(f"{label} has no pixels ({size})")
    if max_side is not None and max(info.width, info.height) > max_side:
        raise BadImage(f"{label} is {size} pixels; the limit is {max_side} pixels a side")
    if max_pixels is not None and pixels > max_pixels:
        raise BadImage(f"{label} is {size} ({pixels:,} pixels); the limit is {max_pixels:,}")
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse all of it, without
    # touching the process-wide warning filters (not thread-safe).
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        raise BadImage(_too_many_pixels(label))


def _too_many_pixels(label: str) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    return f"{label} has more pixels than are safe to decode (over {limit:,})"


def _not_accepted(fp: IO[bytes], label: str) -> str:
    fp.seek(0)
    prefix = fp.read(_PREFIX_BYTES)
    looks = _looks_like(prefix, fp)
    if looks in ("a PNG image", "a JPEG image", "a WEBP image"):
        return f"{label} is a damaged or truncated {looks[2:]}"
    return f"{label} is not {_ACCEPTED}" + (f" (it looks like {looks})" if looks else "")


def _looks_like(prefix: bytes, fp: IO[bytes]) -> str | None:
    """What the first bytes say, by Pillow's own sniffers (no parser runs) or as text."""
    if not prefix:
        return "an empty file"
    Image.init()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(prefix):
                return f"a {name} image"
        except Exception:  # noqa: S112 -- a sniffer's bug must not hide the real answer
            continue
    fp.seek(0)
    text = fp.read(512).decode("utf-8", errors="replace")  # a cut last character is fine
    if "\x00" in text or text.count("\ufffd") > 3:
        return None
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html")):
        return "an HTML page"
    if lowered.startswith(("<svg", "<?xml")):
        return "SVG or XML text"
    return "text"
