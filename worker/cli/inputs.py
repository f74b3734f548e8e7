"""Reading what the user typed: arguments decoded strictly, the prompt from argv, stdin or a
file, times and job ids. Every problem is a ``JobRequestError`` (exit code 2)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from imagegen.worker.constants import MAX_PROMPT_CHARS
from imagegen.worker.errors import JobRequestError

#: A prompt read from stdin or a file beyond this many bytes is not read further (UTF-8
#: takes at most 4 bytes a character; validation names the real limit).
MAX_PROMPT_BYTES = 4 * MAX_PROMPT_CHARS + 1
_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)  # how Python decodes non-UTF-8 argv bytes


def strict_utf8(value: str, what: str) -> str:
    """``value`` from argv, refused when the shell passed bytes that are not UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(value[exc.start])
        where = f"byte 0x{char - 0xDC00:02x}" if char in _SURROGATE_ESCAPES else "a surrogate"
        raise JobRequestError(
            f"{what} is not valid UTF-8 ({where} at position {exc.start}): "
            "pass UTF-8 text (check your terminal's or file's encoding)",
            [{"field": what, "message": "not valid UTF-8"}],
        ) from None
    return value


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt: the argument, stdin when it is ``-``, or the file's text."""
    if (prompt is None) == (prompt_file is None):
        raise JobRequestError(
            "give the prompt as an argument, `-` to read it from stdin, or --prompt-file PATH "
            "(exactly one)"
        )
    if prompt_file is not None:
        try:
            with prompt_file.open("rb") as source:
                return _decode(source, f"--prompt-file {prompt_file}")
        except OSError as exc:
            raise JobRequestError(
                f"--prompt-file {prompt_file}: {exc.strerror or exc}", [_field("prompt_file")]
            ) from None
    assert prompt is not None
    if prompt == "-":
        if sys.stdin.isatty():
            print("reading the prompt from stdin (end it with Ctrl-D)", file=sys.stderr)
        return _decode(sys.stdin.buffer, "the prompt on stdin")
    return strict_utf8(prompt, "prompt")


def _decode(source: BinaryIO, what: str) -> str:
    data = source.read(MAX_PROMPT_BYTES)
    if len(data) == MAX_PROMPT_BYTES:
        raise JobRequestError(
            f"{what} is over {MAX_PROMPT_BYTES - 1} bytes; the prompt limit is "
            f"{MAX_PROMPT_CHARS} characters",
            [_field("prompt")],
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobRequestError(
            f"prompt is not valid UTF-8 ({what}: byte 0x{data[exc.start]:02x} at position "
            f"{exc.start}): save it as UTF-8",
            [_field("prompt")],
        ) from None
    # a file saved on Windows ends its lines with CRLF; a lone CR stays and is refused
    return text.removeprefix("\ufeff").replace("\r\n", "\n").rstrip("\n")


def _field(name: str) -> dict[str, str]:
    return {"field": name, "message": "invalid"}


def job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(strict_utf8(job_id, "job id"))
    except ValueError:
        raise JobRequestError(
            f"{job_id!r} is not a job id (expected a UUID, as `imagegen enqueue` prints)"
        ) from None


_UNITS: dict[str, Callable[[int], timedelta]] = {
    "m": lambda n: timedelta(minutes=n),
    "h": lambda n: timedelta(hours=n),
    "d": lambda n: timedelta(days=n),
}


def parse_since(value: str) -> datetime:
    """``30m`` / ``2h`` / ``7d`` ago, or an ISO time (UTC when it names no zone)."""
    value = strict_utf8(value, "--since")
    hint = "use an ISO time (2026-01-31T12:00) or an age: 30m, 2h, 7d"
    if value[-1:] in _UNITS and value[:-1].isascii() and value[:-1].isdigit():
        try:
            return datetime.now(UTC) - _UNITS[value[-1]](int(value[:-1]))
        except (OverflowError, ValueError):
            raise JobRequestError(
                f"--since {value}: too far back (before year 1); {hint}", [_field("since")]
            ) from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise JobRequestError(f"--since {value!r}: {hint}", [_field("since")]) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
