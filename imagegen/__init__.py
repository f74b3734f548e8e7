"""imagegen: Celery workers that run GPT Image 2 generations on fal.ai.

``from imagegen import enqueue`` is the Python API for web apps; ``celery -A imagegen.worker
worker`` starts a worker. The repository's ``worker/``, ``models/`` and ``migrations/``
install as ``imagegen.worker``, ``imagegen.models`` and ``imagegen.migrations`` (one
namespace: nothing collides with a web app's own ``models``). Loads lazily: importing
``imagegen`` reads no environment.
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
    if name in ("app", "enqueue", "enqueue_many", "cancel"):
        from imagegen import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'imagegen' has no attribute {name!r}")
