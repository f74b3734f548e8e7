"""Job events for web apps: when a job ends, its JSON is POSTed to its ``callback_url``.

Delivered by its own Celery task (``imagegen.callback``, queue ``imagegen.callbacks``),
retried with capped exponential backoff, so a slow or broken web app never holds a
generation slot. Signed with HMAC-SHA256 over ``"{timestamp}.{body}"`` using
``IMAGEGEN_CALLBACK_SECRET``:

    X-Imagegen-Signature: t=<unix seconds>,v1=<hex digest>

A receiver recomputes the digest over the raw body, compares in constant time and
rejects timestamps more than five minutes away (see ``verify``, usable as a reference).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx

from worker import queries
from worker.db import session_scope
from worker.errors import ConfigurationError, JobNotFound
from worker.settings import Settings

SIGNATURE_HEADER = "X-Imagegen-Signature"
TOLERANCE_S = 300


class CallbackRejected(Exception):
    """The web app answered 4xx (not 408/429): sending again would not help."""


class CallbackFailed(Exception):
    """No answer, or 5xx/408/429: worth another try later."""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, now: float | None = None) -> bool:
    """What a web app does with a callback: True when it is ours and fresh."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        stamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - stamp) > TOLERANCE_S:
        return False
    expected = sign(secret, body, stamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def event_body(job: dict[str, Any]) -> bytes:
    """``{"event": "job.finished", "job": <the Job JSON of GET /jobs/{id}, no attempt log>}``."""
    return json.dumps({"event": "job.finished", "job": job}).encode()


def deliver(job_id: uuid.UUID, settings: Settings, http: httpx.Client) -> str:
    """POST the finished job's JSON once; raises CallbackFailed / CallbackRejected."""
    if settings.callback_secret is None:
        raise ConfigurationError("IMAGEGEN_CALLBACK_SECRET is not set: callbacks are not sent")
    with session_scope(settings.database_url) as session:
        try:
            job = queries.get_job(session=session, job_id=job_id)
        except JobNotFound:
            return "job gone"
        url, data = job.callback_url, queries.job_to_dict(job)
    if url is None or data["status"] not in ("succeeded", "refused", "failed", "cancelled"):
        return "nothing to send"
    body = event_body(data)
    headers = {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign(settings.callback_secret.get_secret_value(), body),
    }
    try:
        response = http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise CallbackFailed(f"no answer from the callback URL ({type(exc).__name__})") from exc
    if response.status_code in (408, 429) or response.status_code >= 500:
        raise CallbackFailed(f"the callback URL answered {response.status_code}")
    if response.status_code >= 400:
        raise CallbackRejected(f"the callback URL answered {response.status_code}")
    return f"delivered ({response.status_code})"
