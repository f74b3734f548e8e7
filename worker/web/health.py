"""``/healthz`` (no key: for load balancers and compose) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from worker import metrics
from worker.db import get_engine
from worker.settings import Settings

router = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    """200 when the database and the broker answer; 503 naming what does not."""
    settings: Settings = request.app.state.settings
    checks = {"database": _database(settings), "broker": _broker(request)}
    healthy = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "unavailable", **checks}
    return JSONResponse(body, status_code=200 if healthy else 503)


@metrics_router.get("/metrics", response_class=Response)
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


def _broker(request: Request) -> str:
    from worker.celery_app import app as default_app

    celery = request.app.state.celery or default_app
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"
