"""Job events for web apps: when a job ends, its JSON is POSTed to its ``callback_url``.

Delivered by its own Celery task (``imagegen.callback``, queue ``imagegen.callbacks``),
retried with capped exponential backoff, so a slow or broken web app never holds a
generation slot. Signed the Standard Webhooks way (https://www.standardwebhooks.com), which
receivers verify with its libraries (Python: ``standardwebhooks.Webhook(secret).verify``):

    webhook-id: msg_<hex>           the same for every delivery of one event (deduplicate on it)
    webhook-timestamp: <unix s>     this delivery's; receivers reject it 5 minutes away
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

The key is ``IMAGEGEN_CALLBACK_SECRET``: ``whsec_<base64>`` (the standard form) is the
decoded bytes, any other value its UTF-8 bytes (the receiver passes those bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx

from imagegen.models import CallbackDelivery
from imagegen.worker.db import session_scope
from imagegen.worker.errors import ConfigurationError, JobNotFound
from imagegen.worker.jobs import queries
from imagegen.worker.media.links import settings_link
from imagegen.worker.settings import Settings

SECRET_PREFIX = "whsec_"  # noqa: S105 (the standard prefix, not a secret)


class CallbackRejected(Exception):
    """The web app answered 4xx (not 408/429): sending again would not help."""


class CallbackFailed(Exception):
    """No answer, or 5xx/408/429: worth another try later."""


def signing_key(secret: str) -> bytes:
    """The HMAC key IMAGEGEN_CALLBACK_SECRET names (see the module docstring)."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        key = b""
    if not key:
        raise ConfigurationError("IMAGEGEN_CALLBACK_SECRET: whsec_ must be followed by base64")
    return key


def event_id(job: dict[str, Any]) -> str:
    """The same on every attempt and redelivery of one job's finish; new if it finishes again."""
    event = f"job.finished {job['finished_at']}"
    return "msg_" + uuid.uuid5(uuid.UUID(job["id"]), event).hex


def webhook_headers(key: bytes, message_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{digest}",
    }


def event_body(job: dict[str, Any]) -> bytes:
    """``{"event": "job.finished", "job": <the Job JSON of GET /jobs/{id}, no attempt log>}``."""
    return json.dumps({"event": "job.finished", "job": job}).encode()


def deliver(job_id: uuid.UUID, settings: Settings, http: httpx.Client, attempt: int = 1) -> str:
    """POST the finished job's JSON once, recording what it came to (``callback_deliveries``);
    raises CallbackFailed / CallbackRejected."""
    if settings.callback_secret is None:
        raise ConfigurationError("IMAGEGEN_CALLBACK_SECRET is not set: callbacks are not sent")
    with session_scope(settings.database_url) as session:
        try:
            job = queries.get_job(session=session, job_id=job_id)
        except JobNotFound:
            return "job gone"
        url, data = job.callback_url, queries.job_to_dict(job, link=settings_link(settings))
    if url is None or data["status"] not in ("succeeded", "refused", "failed", "cancelled"):
        return "nothing to send"
    body = event_body(data)
    key = signing_key(settings.callback_secret.get_secret_value())
    headers = webhook_headers(key, event_id(data), body, int(time.time()))
    headers["content-type"] = "application/json"
    try:
        status = http.post(url, content=body, headers=headers).status_code
    except httpx.HTTPError as exc:
        error = f"no answer from the callback URL ({type(exc).__name__})"
        _record(settings, job_id, attempt, "failed", None, error)
        raise CallbackFailed(error) from exc
    if status in (408, 429) or status >= 500:
        _record(settings, job_id, attempt, "failed", status)
        raise CallbackFailed(f"the callback URL answered {status}")
    if status >= 400:
        _record(settings, job_id, attempt, "rejected", status)
        raise CallbackRejected(f"the callback URL answered {status}")
    _record(settings, job_id, attempt, "delivered", status)
    return f"delivered ({status})"


def _record(
    settings: Settings,
    job_id: uuid.UUID,
    attempt: int,
    outcome: str,
    status: int | None,
    detail: str | None = None,
) -> None:
    row = CallbackDelivery(
        job_id=job_id, attempt=attempt, outcome=outcome, http_status=status, detail=detail
    )
    with session_scope(settings.database_url) as session:
        session.add(row)
