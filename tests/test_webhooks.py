"""Webhook mode: fal calls back (ED25519-signed) and the job finishes without any polling.

The emulator signs callbacks like fal and serves its public key as a JWKS; `imagegen api`
receives them; real worker, Postgres and Redis. Verification itself is also tested alone.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagegen.worker.errors import PolicyRefusal, TransientFalError
from imagegen.worker.fal.emulator.webhooks import jwks_for, signed_headers
from imagegen.worker.fal.webhooks import InvalidWebhook, WebhookEvent, WebhookVerifier, outcome
from tests.conftest import Stack, unique

pytestmark = pytest.mark.timeout(90)


def _verifier(key: Ed25519PrivateKey) -> WebhookVerifier:
    jwks = jwks_for(key)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=jwks))
    return WebhookVerifier("https://jwks.test/jwks.json", http=httpx.Client(transport=transport))


def test_a_signed_callback_verifies_and_anything_else_is_rejected() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = _verifier(key)
    body = json.dumps({"request_id": "r1", "status": "OK", "payload": {"images": []}}).encode()
    headers = signed_headers(key, "r1", body)
    assert verifier.verify(headers, body) == "r1"

    with pytest.raises(InvalidWebhook, match="does not match"):
        verifier.verify(headers, body.replace(b"OK", b"ER"))  # body tampered
    with pytest.raises(InvalidWebhook, match="does not match"):
        verifier.verify(signed_headers(Ed25519PrivateKey.generate(), "r1", body), body)
    with pytest.raises(InvalidWebhook, match="too old"):
        verifier.verify(headers, body, now=time.time() + 301)
    with pytest.raises(InvalidWebhook, match="missing"):
        verifier.verify({k: v for k, v in headers.items() if "signature" not in k}, body)
    with pytest.raises(InvalidWebhook, match="differs"):
        WebhookEvent.parse(body, "another-request")


def test_callback_bodies_become_outcomes() -> None:
    ok = {"status": "OK", "payload": {"images": [{"url": "https://x/1.png"}]}}
    assert outcome(ok) == ok["payload"]
    refused = {
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": {"detail": [{"type": "content_policy_violation", "msg": "flagged"}]},
    }
    assert isinstance(outcome(refused), PolicyRefusal)
    down = {"status": "ERROR", "error": "Invalid status code: 503", "payload": {"detail": "x"}}
    assert isinstance(outcome(down), TransientFalError)
    assert outcome({"status": "OK", "payload": None, "payload_error": "not JSON"}) is None


def _webhook_stack(stack: Stack, fallback_s: float = 30) -> str:
    api = stack.start_api()
    stack.env.update(
        {
            "IMAGEGEN_WEBHOOK_URL": f"{api}/fal/webhook",
            "IMAGEGEN_WEBHOOK_FALLBACK_S": str(fallback_s),
        }
    )
    stack.start_worker()
    return api


def _status(stack: Stack, job_id: Any) -> str:
    from imagegen.worker.db import session_scope
    from imagegen.worker.jobs.queries import get_job

    with session_scope(stack.database_url) as session:
        return get_job(session=session, job_id=job_id).status.value


def _polls(stack: Stack, request_id: str) -> dict[str, Any]:
    stats: dict[str, Any] = stack.emulator.stats()["requests"][request_id]
    return stats


@pytest.mark.slow
def test_webhook_mode_finishes_jobs_without_polling_fal(stack: Stack) -> None:
    stack.emulator.configure(latency_s=1.0)
    _webhook_stack(stack)
    ok = stack.enqueue(unique("a fox in the snow"))
    refused = stack.enqueue(unique("[[fal:late-refuse:celebrity_likeness]] a portrait"))
    job = stack.wait_terminal(ok)
    assert job["status"] == "succeeded", job
    assert job["images"] and job["attempts"] == 1
    assert _polls(stack, job["fal_request_id"])["status_polls"] == 0
    assert _polls(stack, job["fal_request_id"])["result_gets"] == 0  # the callback carried it
    job = stack.wait_terminal(refused)
    assert job["status"] == "refused" and job["refusal_category"] == "celebrity_likeness"
    assert job["attempts"] == 1  # a refusal is never retried, webhook or not
    assert _polls(stack, job["fal_request_id"])["status_polls"] == 0
    assert _polls(stack, job["fal_request_id"])["webhooks_sent"] == 1
    assert "job.submitted" in stack.logs()


@pytest.mark.slow
def test_a_lost_callback_falls_back_to_polling(stack: Stack) -> None:
    stack.emulator.configure(latency_s=0.5)
    _webhook_stack(stack, fallback_s=2)
    job_id = stack.enqueue(unique("[[fal:ok+nowebhook]] a lighthouse"))
    # the poller checks a request in webhook mode at IMAGEGEN_WEBHOOK_FALLBACK_S
    job = stack.wait_terminal(job_id, timeout_s=30)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert _polls(stack, job["fal_request_id"])["status_polls"] >= 1
    assert _polls(stack, job["fal_request_id"])["webhooks_sent"] == 0


@pytest.mark.slow
def test_forged_or_unsigned_callbacks_are_refused(stack: Stack) -> None:
    api = stack.start_api()
    body = json.dumps({"request_id": "r1", "status": "OK", "payload": {"images": []}}).encode()
    forged = signed_headers(Ed25519PrivateKey.generate(), "r1", body)
    with httpx.Client(base_url=api) as client:
        assert client.post("/fal/webhook", content=body).status_code == 401
        response = client.post("/fal/webhook", content=body, headers=forged)
        assert response.status_code == 401, response.text
        assert "signature" in response.json()["detail"]


@pytest.mark.slow
def test_cancelling_a_job_at_fal_frees_its_fleet_slot_at_once(stack: Stack) -> None:
    from imagegen.worker.fal.limits import FalLimiter
    from imagegen.worker.jobs.cancel import cancel

    stack.env["IMAGEGEN_FAL_CONCURRENCY"] = "3"
    _webhook_stack(stack)
    job_id = stack.enqueue(unique("[[fal:ok+latency:20]] at fal, then cancelled"))
    limiter = FalLimiter.for_url(stack.redis_url, limit=3, lease_s=120)
    deadline = time.monotonic() + 15
    while "job.submitted" not in stack.logs():
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    assert limiter.in_flight() == 1  # the request keeps its slot while fal runs it
    assert cancel(job_id, settings=stack.settings()) == "cancelled"
    assert limiter.in_flight() == 0  # not when the slot's lease runs out


def test_the_sweeper_purges_webhook_bodies_of_ended_jobs_only(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fal_webhooks would grow without bound: a terminal job's body goes (BATCH at a time,
    every batch in one pass); an open job's stays, and so does a fresh unmatched one."""
    from datetime import timedelta

    from sqlalchemy import func, insert, select

    from imagegen.models import FalWebhook, JobStatus, utcnow
    from imagegen.worker.db import get_engine, write
    from imagegen.worker.fal import webhook_store
    from imagegen.worker.jobs import sweeper
    from tests.conftest import add_jobs

    monkeypatch.setattr(sweeper, "BATCH", 2)
    ended = [
        *add_jobs(database_url, 3, JobStatus.SUCCEEDED, fal_request_id=None),
        *add_jobs(database_url, 2, JobStatus.REFUSED),
    ]
    (open_job,) = add_jobs(database_url, 1, JobStatus.AT_FAL)
    bodies = {f"r-{i}": job_id for i, job_id in enumerate([*ended, open_job])}
    old = utcnow() - timedelta(days=2)
    with get_engine(database_url).begin() as db:
        for request_id, job_id in bodies.items():
            db.execute(
                webhook_store.JOBS.update()
                .where(webhook_store.JOBS.c.id == job_id)
                .values(fal_request_id=request_id)
            )
        rows = [
            {"request_id": r, "job_id": j, "body": {}, "received_at": old}
            for r, j in bodies.items()
        ]
        rows.append({"request_id": "stray-old", "job_id": None, "body": {}, "received_at": old})
        rows.append(
            {"request_id": "stray-new", "job_id": None, "body": {}, "received_at": utcnow()}
        )
        db.execute(insert(webhook_store.WEBHOOKS), rows)

    class _Settings:
        database_url = ""

    settings = _Settings()
    settings.database_url = database_url
    assert sweeper._purge_webhooks(settings) == 6  # type: ignore[arg-type]
    left = write(database_url, lambda db: set(db.execute(select(FalWebhook.request_id)).scalars()))
    assert left == {f"r-{len(ended)}", "stray-new"}
    count = write(
        database_url, lambda db: db.execute(select(func.count()).select_from(FalWebhook)).scalar()
    )
    assert count == 2
