"""The naive pattern, for comparison: ``fal_client.subscribe()`` inside a Celery task.

Started the naive way, ``celery -A bench.naive worker -Q naive`` (default prefork pool,
concurrency = CPU count): each generation holds one worker process for its whole duration,
polling fal's status every 0.1 s (fal-client's default), then writes one row.
"""

from __future__ import annotations

import os
import uuid
from functools import cache

import fal_client
from celery import Celery
from sqlalchemy import DateTime, Engine, String, Uuid, column, create_engine, func, table, update
from sqlalchemy.dialects.postgresql import JSONB

QUEUE = "naive"
TASK = "bench.naive.generate"
MODEL = "openai/gpt-image-2"

app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12"))
app.conf.task_default_queue = QUEUE

jobs = table(
    "jobs",
    column("id", Uuid),
    column("status", String),
    column("images", JSONB),
    column("finished_at", DateTime(timezone=True)),
    column("updated_at", DateTime(timezone=True)),
)


@cache
def engine() -> Engine:
    """One engine per worker process, made after the fork."""
    return create_engine(os.environ["DATABASE_URL"])


@app.task(name=TASK)
def generate(job_id: str) -> None:
    result = fal_client.subscribe(MODEL, arguments={"prompt": f"naive bench job {job_id}"})
    done = {"status": "succeeded", "images": result["images"], "finished_at": func.now()}
    with engine().begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == uuid.UUID(job_id)).values(updated_at=func.now(), **done)
        )
