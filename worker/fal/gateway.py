"""The fal gateway: the only module that imports fal-client.

How fal-client is kept under our retry policy
---------------------------------------------
fal-client 1.0.3 retries 408/409/429, nginx-style 502-504, transport errors and timeouts
up to 10 times inside every call, and re-POSTs a submit whose answer timed out, which
orphans a request fal still runs and bills. We keep the official client and its queue
protocol, but give its ``SyncClient`` our own httpx transport, ``FalTransport``:

* every submit POST is counted at the moment it is sent, through the ``SubmitHooks`` of
  the call (the job's attempt row is written before the request leaves);
* every error answer (HTTP >= 400) and every transport failure is raised as
  ``Answered`` / ``NoAnswer``, which are not httpx errors, so fal-client's retry loop lets
  them through at once; this module classifies them (``worker.fal.answers``).

So one ``submit()`` sends exactly one POST, and only ``worker.jobs.retry.RetryPolicy`` decides
whether another is sent. Status and result polls get their own short timeout. fal-client
reads ``FAL_QUEUE_RUN_HOST`` at import; ``SSL_CERT_FILE`` is honoured by httpx.

What fal billed is in the result GET's ``x-fal-billable-units`` header, which fal-client
would drop: ``result_with_units`` does that GET itself and returns it (``FalResult``).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import fal_client
import httpx
from fal_client import client as fal_client_module

from imagegen.worker.constants import FAL_PRODUCTION_QUEUE_HOST
from imagegen.worker.cost.billed import BILLABLE_UNITS_HEADER, parse_units
from imagegen.worker.errors import (
    ConfigurationError,
    FalError,
    PermanentFalError,
    TransientFalError,
)
from imagegen.worker.fal.answers import classify_answer, classify_completed_error
from imagegen.worker.fal.transport import (
    HOOKS,
    Answered,
    BackupDomains,
    FalTransport,
    FilesClient,
    NoAnswer,
    QueueClient,
    SubmitHooks,
)
from imagegen.worker.settings import Settings


@dataclass(frozen=True)
class FalStatus:
    """One status answer: IN_QUEUE, IN_PROGRESS or COMPLETED (with an error if it failed)."""

    state: str
    queue_position: int | None = None
    error: str | None = None
    error_type: str | None = None

    @property
    def done(self) -> bool:
        return self.state == "COMPLETED"

    def failure(self) -> FalError | None:
        if self.done and (self.error or self.error_type):
            return classify_completed_error(self.error_type, self.error)
        return None


@dataclass(frozen=True)
class FalResult:
    """A COMPLETED request's output and what fal billed for it.

    ``billable_units``: the result GET's ``x-fal-billable-units`` (in the endpoint's pricing
    unit; fal-client drops this header); None when fal did not send it (unknown, not 0).
    """

    output: dict[str, Any]
    billable_units: Decimal | None


def queue_host() -> str:
    """The queue host fal-client was pointed at (FAL_QUEUE_RUN_HOST, read at its import)."""
    return httpx.URL(fal_client_module.QUEUE_URL_FORMAT).netloc.decode()


def targets_production() -> bool:
    return queue_host() in (FAL_PRODUCTION_QUEUE_HOST, "queue.falrun.com")


def resolve_key(settings: Settings) -> str:
    """FAL_KEY; required against the real fal.ai, a placeholder for an emulator."""
    if settings.fal_key is not None and settings.fal_key.get_secret_value():
        return settings.fal_key.get_secret_value()
    if targets_production():
        raise ConfigurationError(
            "FAL_KEY is not set but the worker targets fal.ai "
            f"({queue_host()}); set FAL_KEY, or FAL_QUEUE_RUN_HOST for an emulator"
        )
    return "emulator-no-key"


class FalGateway:
    """Submit, poll, fetch and cancel GPT Image 2 requests on fal's queue."""

    def __init__(
        self,
        *,
        key: str,
        submit_timeout_s: float = 30.0,
        poll_timeout_s: float = 30.0,
        inner_transport: httpx.BaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_s: float = 60.0,
    ) -> None:
        verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        # httpx closes a connection idle for 5 s. A host's calls come in waves a generation
        # apart (polls near the end of one, the next submits): at 5 s every wave opened
        # its connections anew, a TLS handshake each on both ends, in the busiest second.
        # A connection the server closed meanwhile is noticed before reuse and replaced.
        limits = httpx.Limits(keepalive_expiry=keepalive_s)
        plain = httpx.HTTPTransport(retries=0, verify=verify, limits=limits)
        inner = inner_transport or BackupDomains(plain)
        transport = FalTransport(inner, submit_s=submit_timeout_s, poll_s=poll_timeout_s)
        self._client = QueueClient(key=key)
        object.__setattr__(self._client, "transport", transport)
        self._files = FilesClient(
            timeout=poll_timeout_s, follow_redirects=True, verify=verify, limits=limits
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, ssl_context: ssl.SSLContext | None = None
    ) -> FalGateway:
        return cls(
            key=resolve_key(settings),
            submit_timeout_s=settings.submit_timeout_s,
            poll_timeout_s=settings.poll_timeout_s,
            ssl_context=ssl_context,
            keepalive_s=settings.fal_keepalive_s,
        )

    def submit(
        self,
        model: str,
        arguments: dict[str, Any],
        hooks: SubmitHooks,
        webhook_url: str | None = None,
    ) -> str:
        """Send one submit POST and return fal's request id (``fal_webhook`` if given)."""
        token = HOOKS.set(hooks)
        try:
            with _translated("submit"):
                return self._client.submit(model, arguments, webhook_url=webhook_url).request_id
        finally:
            HOOKS.reset(token)

    def status(self, model: str, request_id: str) -> FalStatus:
        with _translated("status"):
            status = self._client.status(model, request_id)
        if isinstance(status, fal_client.Queued):
            return FalStatus("IN_QUEUE", queue_position=status.position)
        if isinstance(status, fal_client.InProgress):
            return FalStatus("IN_PROGRESS")
        assert isinstance(status, fal_client.Completed)
        return FalStatus("COMPLETED", error=status.error, error_type=status.error_type)

    def result(self, model: str, request_id: str) -> dict[str, Any]:
        """The output of a COMPLETED request (``result_with_units`` without the units)."""
        return self.result_with_units(model, request_id).output

    def result_with_units(self, model: str, request_id: str) -> FalResult:
        """The output of a COMPLETED request and its billable units (one GET).

        fal-client's ``handle.get()`` would poll the status once more first and drops the
        response headers; we have just seen COMPLETED, so the handle's own client fetches
        the result directly. An error answer (a 422 refusal) is raised as before, with the
        units it carried on the exception's ``billable_units``.
        """
        response: httpx.Response | None = None
        try:
            with _translated("result"):
                handle = self._client.get_handle(model, request_id)
                response = handle.client.get(handle.response_url)
                output = response.json()
        except FalError as exc:
            answered = exc.__cause__.response if isinstance(exc.__cause__, Answered) else None
            source = answered if answered is not None else response
            if source is not None:
                exc.billable_units = _units(source, request_id)
            raise
        units = _units(response, request_id)
        if not isinstance(output, dict):
            error = PermanentFalError("fal answered the result with JSON that is not an object")
            error.billable_units = units
            raise error
        return FalResult(output, units)

    def upload(self, data: bytes, content_type: str) -> str:
        """Put an input image on fal's CDN (fal-client's upload): its URL, for a request."""
        with _translated("upload"):
            return str(self._client.upload(data, content_type))

    def check_images(self, images: list[dict[str, Any]]) -> None:
        """Each image URL must answer: a 404 from fal's CDN fails the job, clearly.

        Uses a plain client: fal's Authorization header is never sent to the file host.
        Asks for the first byte only and reads what comes (up to a small cap), so the
        connection stays reusable: an unread body would close it and cost a new TLS handshake.
        """
        for image in images:
            url = str(image["url"])
            try:
                with self._files.stream("GET", url, headers={"Range": "bytes=0-0"}) as response:
                    status = response.status_code
                    read = 0
                    for chunk in response.iter_raw():
                        read += len(chunk)
                        if read > _CHECK_READ_CAP:  # the host ignored Range: stop downloading
                            break
            except httpx.HTTPError as exc:
                raise TransientFalError(f"could not fetch an image fal returned ({exc})") from exc
            if status == 404 or status == 410:
                raise PermanentFalError(f"fal returned an image URL that answers {status}: {url}")
            if status >= 400:
                raise TransientFalError(f"an image URL fal returned answers {status}: {url}")

    def cancel(self, model: str, request_id: str) -> None:
        with _translated("cancel"):
            self._client.cancel(model, request_id)

    def close(self) -> None:
        self._client._client.close()
        self._files.close()


#: bytes check_images reads when a file host ignores its Range header (then it closes).
_CHECK_READ_CAP = 256 * 1024


def _units(response: httpx.Response, request_id: str) -> Decimal | None:
    return parse_units(response.headers.get(BILLABLE_UNITS_HEADER), request_id=request_id)


@contextmanager
def _translated(call: str) -> Iterator[None]:
    """Wrap fal-client and httpx errors at the boundary, chaining the cause."""
    try:
        yield
    except Answered as exc:
        r = exc.response
        raise classify_answer(r.status_code, r.headers, r.content) from exc
    except NoAnswer as exc:
        kind = type(exc.cause).__name__
        raise TransientFalError(f"no answer from fal to the {call} ({kind}: {exc})") from exc
    except fal_client.FalClientHTTPError as exc:  # only if a call bypassed our transport
        r = exc.response
        raise classify_answer(r.status_code, r.headers, r.content) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise PermanentFalError(f"fal answered the {call} with a malformed body ({exc})") from exc
