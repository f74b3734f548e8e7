"""fal's webhook deliveries: a signed POST to `fal_webhook` when a request completes.

Signed like fal: ED25519 over "{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}",
the hex signature and its parts in X-Fal-Webhook-* headers; the public key is served as a
JWKS at /.well-known/jwks.json. Failed deliveries are retried a few times (fal: 10 over 2 h).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .protocol import Protocol
from .state import QueueState, Request

USER_ID = "emulator-user"
RETRY_DELAYS_S = (0.5, 1.0, 2.0)


def jwks_for(key: Ed25519PrivateKey) -> dict[str, Any]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "emulator", "use": "sig"}]}


def signed_headers(key: Ed25519PrivateKey, request_id: str, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    digest = hashlib.sha256(body).hexdigest()
    message = f"{request_id}\n{USER_ID}\n{timestamp}\n{digest}".encode()
    return {
        "content-type": "application/json",
        "x-fal-webhook-request-id": request_id,
        "x-fal-webhook-user-id": USER_ID,
        "x-fal-webhook-timestamp": timestamp,
        "x-fal-webhook-signature": key.sign(message).hex(),
    }


def webhook_body(protocol: Protocol, req: Request) -> bytes:
    """fal's callback JSON for a completed request, from what its result endpoint answers."""
    reply = protocol.result(req)
    try:
        payload: Any = json.loads(reply.body)
    except ValueError:
        payload = None
    body: dict[str, Any] = {
        "request_id": req.rid,
        "gateway_request_id": req.rid,
        "status": "OK" if reply.status == 200 else "ERROR",
        "payload": payload,
    }
    if reply.status != 200:
        body["error"] = f"Invalid status code: {reply.status}"
    if payload is None:
        body["payload_error"] = "Response payload is not JSON"
    return json.dumps(body).encode()


class WebhookSender:
    """Watches for completed requests with a webhook and delivers their callbacks."""

    def __init__(self, state: QueueState, protocol: Protocol, key: Ed25519PrivateKey) -> None:
        self._state, self._protocol, self._key = state, protocol, key
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fal-webhook")
        self._http = httpx.Client(timeout=15)
        self._thread = threading.Thread(target=self._run, daemon=True, name="fal-webhooks")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for req in self._state.take_due_webhooks():
                self._pool.submit(self._deliver, req)

    def _deliver(self, req: Request) -> None:
        assert req.webhook_url is not None
        body = webhook_body(self._protocol, req)
        for delay in (0.0, *RETRY_DELAYS_S):
            if self._stop.wait(delay):
                return
            try:
                headers = signed_headers(self._key, req.rid, body)
                response = self._http.post(req.webhook_url, content=body, headers=headers)
            except httpx.HTTPError:
                continue
            if response.status_code < 300:
                self._state.count_webhook(req.rid, delivered=True)
                return
        self._state.count_webhook(req.rid, delivered=False)
