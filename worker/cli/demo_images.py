"""The demo's images, saved to a local folder so a newcomer can open them.

The images are fetched from where fal (or the emulator, whose CA is in SSL_CERT_FILE while
the demo runs) serves them, before the demo stops the emulator.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from imagegen.models import Job, JobStatus

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_NOT_A_WORD = re.compile(r"[^a-z0-9]+")
_DIRECTIVE = re.compile(r"\[\[fal:[^\]]*\]\]\s*")


def save_images(jobs: list[Job], folder: Path, console: Console) -> list[Path]:
    """Every image of the succeeded ``jobs`` into ``folder``; says where on ``console``."""
    wanted = [
        (_file_name(number, job, index, image), image)
        for number, job in enumerate(jobs, 1)
        if job.status is JobStatus.SUCCEEDED
        for index, image in enumerate(job.images or [], 1)
        if isinstance(image, dict) and image.get("url")
    ]
    if not wanted:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with httpx.Client(timeout=30, follow_redirects=True) as client:
        for name, image in wanted:
            path = folder / name
            try:
                response = client.get(str(image["url"]))
                response.raise_for_status()
            except httpx.HTTPError as exc:
                console.print(f"could not fetch {name}: {exc}", soft_wrap=True, markup=False)
                continue
            path.write_bytes(response.content)
            saved.append(path)
    if saved:
        console.print(
            f"{len(saved)} image(s) in {folder.resolve()}/ (open {saved[0].resolve()})",
            soft_wrap=True,
            markup=False,
        )
    return saved


def _file_name(number: int, job: Job, index: int, image: dict[str, Any]) -> str:
    words = _NOT_A_WORD.sub("-", _DIRECTIVE.sub("", job.prompt).lower()).strip("-")[:40]
    extension = _EXTENSIONS.get(str(image.get("content_type")), "img")
    return f"{number:02d}-{words.rstrip('-') or 'image'}-{index}.{extension}"
