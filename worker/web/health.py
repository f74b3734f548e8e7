"""``/healthz`` (no key: for load balancers and compose) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from celery import Celery
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from imagegen.worker import metrics
from imagegen.worker.contract import Health
from imagegen.worker.db import get_engine
from imagegen.worker.settings import Settings

from .errors import RESPONSES

router = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or the broker is down"}},
)
def healthz(request: Request) -> JSONResponse:
    """503 when the database or the broker does not answer; 200 otherwise, with status
    ``degraded`` when no worker consumes the job queue (the API still queues jobs)."""
    settings: Settings = request.app.state.settings
    celery = request.app.state.celery or _default_celery()
    checks = {"database": _database(settings), "broker": _broker(celery)}
    up = all(value == "ok" for value in checks.values())
    workers = _workers(celery, settings.health_worker_timeout_s) if up else "not checked"
    status = "unavailable" if not up else "ok" if workers.startswith("ok") else "degraded"
    body = Health(status=status, workers=workers, **checks)
    return JSONResponse(body.model_dump(), status_code=200 if up else 503)


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        401: RESPONSES[401],
    },
)
def scrape(request: Request) -> Response:
    """Prometheus exposition: the API's requests and enqueues, job counts from the table,
    queue depth. Workers serve their own (IMAGEGEN_WORKER_METRICS_PORT)."""
    settings: Settings = request.app.state.settings
    payload, content_type = metrics.api_exposition(settings)
    return Response(payload, media_type=content_type)


def _database(settings: Settings) -> str:
    try:
        with get_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def _default_celery() -> Celery:
    from imagegen.worker.celery_app import app

    return app


def _broker(celery: Celery) -> str:
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def _workers(celery: Celery, timeout_s: float) -> str:
    """Which workers consume the job queue, asked over the broker (Celery's remote control)."""
    queue = celery.conf.task_default_queue
    try:
        replies = celery.control.inspect(timeout=timeout_s).active_queues() or {}
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    consuming = [
        name for name, queues in replies.items() if any(q["name"] == queue for q in queues)
    ]
    if consuming:
        return f"ok ({len(consuming)})"
    return f"none: no worker consumes the queue {queue!r}"
