"""imagegen: Celery workers that run GPT Image 2 generations on fal.ai.

``from worker import enqueue`` is the Python API for web apps; ``celery -A worker worker``
starts a worker (the Celery app is ``worker.app``). Both load lazily, so importing a
submodule (the CLI, the models) never reads the environment by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.errors import IdempotencyConflict, ImagegenError, JobRequestError

if TYPE_CHECKING:
    from worker.celery_app import app
    from worker.jobs.enqueue import cancel, enqueue, enqueue_many

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
        from worker.celery_app import app

        return app
    if name in ("enqueue", "enqueue_many", "cancel"):
        from worker.jobs import enqueue as api

        return getattr(api, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
