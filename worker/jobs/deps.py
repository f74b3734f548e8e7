"""Everything a stage talks to, built once per process (and a fake of each for tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from celery import Celery

from imagegen.worker.fal.account import AccountGuard
from imagegen.worker.fal.gateway import FalResult, SubmitHooks
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.jobs.retry import RetryPolicy
from imagegen.worker.media.storage import Storage
from imagegen.worker.moderation import Chain
from imagegen.worker.settings import Settings


class Gateway(Protocol):
    """fal's queue, as the stages use it (worker.fal.gateway.FalGateway, or a fake)."""

    def submit(
        self,
        model: str,
        arguments: dict[str, Any],
        hooks: SubmitHooks,
        webhook_url: str | None = None,
    ) -> str: ...

    def result(self, model: str, request_id: str) -> dict[str, Any]: ...

    def result_with_units(self, model: str, request_id: str) -> FalResult:
        """The output and its ``x-fal-billable-units`` (None: fal did not say)."""
        ...

    def upload(self, data: bytes, content_type: str) -> str: ...

    def check_images(self, images: list[dict[str, Any]]) -> None: ...

    def cancel(self, model: str, request_id: str) -> None: ...


@dataclass
class Deps:
    settings: Settings
    gateway: Gateway
    limiter: FalLimiter
    guard: AccountGuard
    policy: RetryPolicy
    app: Celery
    #: the moderation pre-filter (IMAGEGEN_MODERATION); None: off
    moderation: Chain | None = None
    #: where images are copied (IMAGEGEN_STORAGE_URL); None: not copied (store_images off)
    storage: Storage | None = None
    #: the client that downloads fal's image files (no fal credentials on it)
    files: httpx.Client | None = None
    #: fal's file URLs may point at this machine (the emulator), not only at fal's CDN
    fal_files_private: bool = False
