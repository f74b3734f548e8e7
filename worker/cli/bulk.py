"""``imagegen enqueue-bulk FILE.jsonl``: one job per line, the HTTP API's fields.

Every line is checked before anything is queued: with any bad line nothing is, and each
bad line is reported with its number. Valid files are queued in chunks (``enqueue_many``:
one transaction and one broker round trip each); if the broker fails midway, the chunks
before stay queued and the rest are not (rerun with idempotency keys to resume safely).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from celery import Celery

from imagegen.worker.errors import JobRequestError
from imagegen.worker.jobs.enqueue import enqueue_many
from imagegen.worker.jobs.params import validate_request
from imagegen.worker.settings import Settings

#: jobs per ``enqueue_many`` call (and progress step)
CHUNK = 500


@dataclass(frozen=True)
class BadLine:
    number: int
    message: str


def parse_lines(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """The file's jobs as ``enqueue_many`` items, and its bad lines (1-based numbers).
    Blank lines are skipped."""
    items: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    seen_keys: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = _item(line)
        except (JobRequestError, ValueError) as exc:
            bad.append(BadLine(number, str(exc)))
            continue
        key = item.get("idempotency_key")
        if key is not None and key in seen_keys:
            bad.append(BadLine(number, f"idempotency_key repeats line {seen_keys[key]}"))
            continue
        if key is not None:
            seen_keys[key] = number
        items.append(item)
    return items, bad


def _item(line: str) -> dict[str, Any]:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(raw, dict):
        raise ValueError('not a JSON object (expected {"prompt": ...})')
    key = raw.pop("idempotency_key", None)
    if key is not None and not isinstance(key, str):
        raise ValueError("idempotency_key: must be a string")
    item = _validated(raw, key)
    return {**item, "idempotency_key": key} if key is not None else item


def _validated(fields: dict[str, Any], key: str | None) -> dict[str, Any]:
    """The line as an ``enqueue_many`` item, checked as enqueue checks it (so that no
    valid line fails later): ``validate_request``, POST /jobs's rules."""
    validate_request(fields, idempotency_key=key)
    return fields


def enqueue_items(
    items: list[dict[str, Any]], *, settings: Settings, app: Celery | None = None
) -> Iterator[list[uuid.UUID]]:
    """Queue the (already checked) items in chunks, yielding each chunk's ids when it is
    queued: on an ``EnqueueError`` the chunks yielded so far stay queued."""
    for start in range(0, len(items), CHUNK):
        yield enqueue_many(items[start : start + CHUNK], settings=settings, app=app)
