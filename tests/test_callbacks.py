"""Job-event callbacks in the Standard Webhooks format, checked by its reference library
(``standardwebhooks``, what a web app verifies with), not by our own code."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from imagegen.worker.errors import ConfigurationError
from imagegen.worker.jobs.callbacks import event_id, signing_key, webhook_headers

JOB = {"id": str(uuid.uuid4()), "status": "succeeded", "finished_at": "2026-01-02T03:04:05+00:00"}
Forge = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]
BODY = json.dumps({"event": "job.finished", "job": JOB}).encode()


def _headers(secret: str, body: bytes = BODY, timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return webhook_headers(signing_key(secret), event_id(JOB), body, stamp)


def test_a_whsec_secret_verifies_with_the_standard_library() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    headers = _headers(secret)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    assert headers["webhook-signature"].startswith("v1,")


def test_a_raw_secret_is_its_utf8_bytes() -> None:
    headers = _headers("a plain secret, é")
    assert Webhook("a plain secret, é".encode()).verify(BODY, headers)["job"]["id"] == JOB["id"]


@pytest.mark.parametrize(
    "forge",
    [
        lambda h, b: (h, b.replace(b"succeeded", b"failed")),  # body changed
        lambda h, b: ({**h, "webhook-id": "msg_other"}, b),  # replayed as another event
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
        lambda h, b: (_headers("another secret"), b),
        lambda h, b: (_headers("raw", timestamp=int(time.time()) - 301), b),  # too old
    ],
)
def test_anything_but_the_signed_message_is_rejected(forge: Forge) -> None:
    headers, body = forge(_headers("raw"), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(b"raw").verify(body, headers)


def test_the_message_id_is_one_per_event_across_deliveries() -> None:
    first, again = _headers("raw", timestamp=1_000), _headers("raw", timestamp=2_000)
    assert first["webhook-id"] == again["webhook-id"]  # a redelivery: receivers deduplicate
    assert first["webhook-signature"] != again["webhook-signature"]
    assert event_id({**JOB, "id": str(uuid.uuid4())}) != event_id(JOB)
    assert event_id({**JOB, "finished_at": "2026-01-02T03:04:06+00:00"}) != event_id(JOB)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!"])
def test_a_bad_whsec_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="whsec_ must be followed by base64"):
        signing_key(secret)
