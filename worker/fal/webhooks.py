"""fal's webhooks: verify the ED25519 signature, and turn a callback into an outcome.

fal signs ``"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(raw body)}"`` with an
ED25519 key published as a JWKS (``IMAGEGEN_FAL_JWKS_URL``) and sends the signature (hex)
and the parts in ``X-Fal-Webhook-*`` headers. A callback older or newer than the
tolerance (300 s) is rejected, so a captured one cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from imagegen.worker.errors import FalError
from imagegen.worker.fal.answers import classify_answer, parse_json

REQUEST_ID = "x-fal-webhook-request-id"
USER_ID = "x-fal-webhook-user-id"
TIMESTAMP = "x-fal-webhook-timestamp"
SIGNATURE = "x-fal-webhook-signature"
_STATUS_CODE = re.compile(r"\b([1-5]\d\d)\b")


class InvalidWebhook(Exception):
    """The callback is not fal's (bad or missing signature, stale, malformed)."""


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def _b64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def keys_from_jwks(jwks: Any) -> list[Ed25519PublicKey]:
    """The Ed25519 keys (``kty`` OKP, ``crv`` Ed25519) of a JWKS document."""
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(entries, list):
        raise InvalidWebhook("the JWKS has no 'keys' list")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "OKP":
            continue
        if entry.get("crv") != "Ed25519" or not isinstance(entry.get("x"), str):
            continue
        keys.append(Ed25519PublicKey.from_public_bytes(_b64url(entry["x"])))
    if not keys:
        raise InvalidWebhook("the JWKS holds no Ed25519 key")
    return keys


class WebhookVerifier:
    """Checks callbacks against fal's JWKS, fetched once and refreshed at most every minute."""

    def __init__(
        self,
        jwks_url: str,
        *,
        tolerance_s: float = 300.0,
        cache_s: float = 3600.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._url, self._tolerance_s, self._cache_s = jwks_url, tolerance_s, cache_s
        self._http = http or httpx.Client(timeout=10)
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def _load(self, *, force: bool) -> list[Ed25519PublicKey]:
        with self._lock:
            age = time.monotonic() - self._fetched_at
            if self._keys and (age < self._cache_s) and not (force and age > 60):
                return self._keys
            try:
                response = self._http.get(self._url)
                response.raise_for_status()
                self._keys = keys_from_jwks(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                if not self._keys:
                    raise InvalidWebhook(f"fal's public keys could not be fetched ({exc})") from exc
            self._fetched_at = time.monotonic()
            return self._keys

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> str:
        """The callback's request id when it is fal's; InvalidWebhook otherwise."""
        lower = {k.lower(): v for k, v in headers.items()}
        parts = [lower.get(name) for name in (REQUEST_ID, USER_ID, TIMESTAMP, SIGNATURE)]
        request_id, user_id, timestamp, signature = parts
        if not (request_id and user_id and timestamp and signature):
            raise InvalidWebhook("the X-Fal-Webhook-* signature headers are missing")
        try:
            sent_at = int(timestamp)
            raw_signature = bytes.fromhex(signature)
        except ValueError:
            raise InvalidWebhook("the signature headers are malformed") from None
        if abs((now if now is not None else time.time()) - sent_at) > self._tolerance_s:
            raise InvalidWebhook("the callback's timestamp is too old or in the future")
        message = signed_message(request_id, user_id, timestamp, body)
        for force in (False, True):  # a key fal rotated in: refetch once
            for key in self._load(force=force):
                try:
                    key.verify(raw_signature, message)
                except InvalidSignature:
                    continue
                return request_id
        raise InvalidWebhook("the signature does not match fal's public keys")


@dataclass(frozen=True)
class WebhookEvent:
    """What fal's callback says about one request."""

    request_id: str
    body: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes, request_id: str) -> WebhookEvent:
        body = parse_json(raw)
        if not isinstance(body, dict) or body.get("status") not in ("OK", "ERROR"):
            raise InvalidWebhook("the callback body is not fal's webhook JSON")
        if body.get("request_id") not in (None, request_id):
            raise InvalidWebhook("the body's request id differs from the signed one")
        return cls(request_id, body)


def outcome(body: Mapping[str, Any]) -> dict[str, Any] | FalError | None:
    """The model output (OK), the error it stands for (ERROR), or None when unusable.

    None (a payload fal could not serialise: ``payload_error``) means: read the result
    with one GET instead.
    """
    payload = body.get("payload")
    if body.get("status") == "OK":
        return payload if isinstance(payload, dict) else None
    if payload is None:
        return None
    match = _STATUS_CODE.search(str(body.get("error") or ""))
    status = int(match.group(1)) if match else 500
    return classify_answer(status, {}, json.dumps(payload).encode())
