"""Tiny PNG encoder (stdlib only) for the emulator's fake generated images."""

from __future__ import annotations

import functools
import hashlib
import math
import random
import struct
import zlib

Colour = tuple[int, int, int]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A small palette keeps the (width, height, colour) cache bounded.
_PALETTE: tuple[Colour, ...] = (
    (0x3B, 0x82, 0xF6),
    (0xEF, 0x44, 0x44),
    (0x10, 0xB9, 0x81),
    (0xF5, 0x9E, 0x0B),
    (0x8B, 0x5C, 0xF6),
    (0xEC, 0x48, 0x99),
    (0x14, 0xB8, 0xA6),
    (0x64, 0x74, 0x8B),
)
_BAND_ROWS = 16  # rows per gradient band: identical rows compress fast


def colour_for(request_id: str) -> Colour:
    """Pick a stable palette colour for a request id."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return _PALETTE[digest[0] % len(_PALETTE)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _scanlines(width: int, height: int, colour: Colour) -> bytes:
    """A vertical gradient from `colour` down to half its brightness."""
    bands: list[bytes] = []
    for top in range(0, height, _BAND_ROWS):
        shade = 1.0 - 0.5 * top / max(height, 1)
        pixel = bytes(int(c * shade) for c in colour)
        row = b"\x00" + pixel * width
        bands.append(row * min(_BAND_ROWS, height - top))
    return b"".join(bands)


@functools.lru_cache(maxsize=64)
def make_png(width: int, height: int, colour: Colour) -> bytes:
    """Encode an RGB PNG of the given size; results are cached."""
    if width <= 0 or height <= 0:
        raise ValueError("PNG dimensions must be positive")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(_scanlines(width, height, colour), 6)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    """Read (width, height) from a PNG's IHDR chunk."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


# Bytes a noise PNG spends outside its IDAT data: signature, IHDR, IDAT, padding and IEND framing.
_NOISE_OVERHEAD = 8 + (12 + 13) + 12 + 12 + 12


def _noise_idat(side: int, seed: int) -> bytes:
    """Random RGB rows (filter byte 0 each), deflated with level 0: incompressible, fast."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    stride = side * 3
    rows = b"".join(b"\x00" + pixels[i : i + stride] for i in range(0, len(pixels), stride))
    return zlib.compress(rows, 0)


@functools.lru_cache(maxsize=8)
def noise_png(n_bytes: int) -> tuple[bytes, int, int]:
    """A square noise PNG of exactly `n_bytes` (made once per size); returns (data, w, h).

    A private ancillary `emPd` chunk pads it to the exact size; decoders skip it.
    """
    side = max(1, math.isqrt(max(n_bytes - _NOISE_OVERHEAD, 3) // 3))
    idat = _noise_idat(side, n_bytes)
    while side > 1 and len(idat) + _NOISE_OVERHEAD > n_bytes:
        side -= 1
        idat = _noise_idat(side, n_bytes)
    padding = n_bytes - _NOISE_OVERHEAD - len(idat)
    if padding < 0:
        raise ValueError(f"{n_bytes} bytes is too small for a noise PNG")
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"emPd", b"\x00" * padding),
            _chunk(b"IDAT", idat),
            _chunk(b"IEND", b""),
        ]
    )
    return data, side, side
