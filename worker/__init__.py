"""imagegen: Celery workers that run GPT Image 2 generations on fal.ai.

``from worker import enqueue`` is the Python API for web apps; ``celery -A worker worker``
starts a worker (the Celery app is ``worker.app``).
"""

from worker.celery_app import app
from worker.enqueue import enqueue
from worker.errors import IdempotencyConflict, ImagegenError, JobRequestError

__all__ = ["IdempotencyConflict", "ImagegenError", "JobRequestError", "app", "enqueue"]
