"""``POST /fal/webhook``: fal's callback in webhook mode (``IMAGEGEN_WEBHOOK_URL``).

The body is verified against fal's ED25519 signature (``worker.fal.webhooks``), kept in
``fal_webhooks``, and the job moves at_fal → collecting (``heard_completed``): its collect
reads the stored body. Answers 2xx
only once the callback is stored, so fal redelivers anything we lost.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from celery import Celery
from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from imagegen.worker.db import write
from imagegen.worker.fal import webhook_store
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.fal.webhooks import InvalidWebhook, WebhookEvent, WebhookVerifier
from imagegen.worker.jobs.dispatch import heard_completed
from imagegen.worker.logs import get_logger
from imagegen.worker.settings import Settings

from .errors import RESPONSES, TOO_LARGE

router = APIRouter(tags=["fal"])
log = get_logger(__name__)


@lru_cache(maxsize=4)
def _verifier(jwks_url: str, tolerance_s: float) -> WebhookVerifier:
    return WebhookVerifier(jwks_url, tolerance_s=tolerance_s)


@router.post("/fal/webhook", responses={**RESPONSES, **TOO_LARGE})
async def fal_webhook(request: Request, job_id: str | None = None) -> dict[str, Any]:
    """fal's signed completion callback (no API key: the signature authenticates it)."""
    raw = await request.body()  # the exact bytes fal signed
    return await run_in_threadpool(_accept, request, dict(request.headers), raw, job_id)


def _accept(
    request: Request, headers: dict[str, str], raw: bytes, hint: str | None
) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    verifier = _verifier(settings.fal_jwks_url, settings.webhook_tolerance_s)
    try:
        request_id = verifier.verify(headers, raw)
        event = WebhookEvent.parse(raw, request_id)
    except InvalidWebhook as exc:
        log.warning("fal.webhook_rejected", reason=str(exc))
        raise HTTPException(401, f"not a valid fal webhook: {exc}") from None
    job_hint = _uuid(hint)
    celery: Celery = request.app.state.celery or _default_celery()
    job_id = _job_for(settings, request_id, event.body, job_hint)
    if job_id is None:
        log.info("fal.webhook_unmatched", fal_request_id=request_id)
        return {"status": "ignored", "reason": "no open job has this request"}
    limiter = FalLimiter.for_settings(settings)
    collecting = heard_completed(settings, celery, limiter, job_id)
    log.info(
        "fal.webhook_received",
        job_id=str(job_id),
        fal_request_id=request_id,
        collecting=collecting,
    )
    return {"status": "accepted", "job_id": str(job_id)}


def _job_for(
    settings: Settings, request_id: str, body: dict[str, Any], hint: uuid.UUID | None
) -> uuid.UUID | None:
    """Store fal's body (redeliveries are no-ops); the open job it is for, if any."""
    job_id, _fresh = write(
        settings.database_url, lambda db: webhook_store.record(db, request_id, body, hint)
    )
    return job_id


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def _default_celery() -> Celery:
    from imagegen.worker.celery_app import app

    return app
