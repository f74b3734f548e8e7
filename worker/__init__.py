"""imagegen: Celery workers that run GPT Image 2 generations on fal.ai.

Installed as ``worker`` (``from imagegen import enqueue`` re-exports the Python
API); ``celery -A worker worker`` finds the Celery app as ``worker.app``.
Both load lazily, so importing a submodule (the CLI, the models) reads no environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagegen.worker.errors import IdempotencyConflict, ImagegenError, JobRequestError

if TYPE_CHECKING:
    from imagegen.worker.celery_app import app
    from imagegen.worker.jobs.cancel import cancel
    from imagegen.worker.jobs.enqueue import enqueue, enqueue_many

__all__ = [
    "IdempotencyConflict",
    "ImagegenError",
    "JobRequestError",
    "app",
    "cancel",
    "enqueue",
    "enqueue_many",
]


def __getattr__(name: str) -> Any:
    if name == "app":
        from imagegen.worker.celery_app import app

        return app
    if name == "cancel":
        from imagegen.worker.jobs.cancel import cancel

        return cancel
    if name in ("enqueue", "enqueue_many"):
        from imagegen.worker.jobs import enqueue as api

        return getattr(api, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
