"""The httpx transport under fal-client's SyncClient: one POST per submit, counted where sent.

fal-client 1.0.3 retries 408/409/429, 5xx, transport errors and timeouts inside every call,
and re-POSTs a submit whose answer timed out. ``FalTransport`` counts each submit POST
through the call's ``SubmitHooks`` as it leaves and raises every error answer and
transport failure as ``Answered`` / ``NoAnswer`` (not httpx errors), so fal-client's retry
loop lets them through; ``worker.fal.gateway`` classifies them.
"""

from __future__ import annotations

import contextvars
from functools import cached_property
from typing import Any, Protocol

import fal_client
import httpx
from fal_client import client as fal_client_module


class SubmitHooks(Protocol):
    """Told about each submit POST, where it is sent."""

    def sending(self) -> None:
        """The POST is about to leave: persist the count now."""

    def not_sent(self) -> None:
        """The connection could not be opened: the POST never reached fal."""


HOOKS: contextvars.ContextVar[SubmitHooks | None] = contextvars.ContextVar(
    "imagegen_submit_hooks", default=None
)


class Answered(Exception):
    """fal answered with an error status; carries the (read) response."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class NoAnswer(Exception):
    """No answer came back (timeout, refused or dropped connection)."""

    def __init__(self, cause: httpx.TransportError) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


def is_submit(request: httpx.Request) -> bool:
    return request.method == "POST" and "/requests/" not in request.url.path


class FalTransport(httpx.BaseTransport):
    """Counts submits where they are sent; surfaces failures past fal-client's retry loop."""

    def __init__(self, inner: httpx.BaseTransport, *, submit_s: float, poll_s: float) -> None:
        self._inner = inner
        self._submit_timeout = httpx.Timeout(submit_s, connect=min(submit_s, 10.0)).as_dict()
        self._poll_timeout = httpx.Timeout(poll_s, connect=min(poll_s, 10.0)).as_dict()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        submit = is_submit(request)
        request.extensions["timeout"] = self._submit_timeout if submit else self._poll_timeout
        hooks = HOOKS.get() if submit else None
        if hooks is not None:
            hooks.sending()
        try:
            response = self._inner.handle_request(request)
        except httpx.ConnectError as exc:
            if hooks is not None:
                hooks.not_sent()
            raise NoAnswer(exc) from exc
        except httpx.TransportError as exc:
            raise NoAnswer(exc) from exc
        if response.status_code >= 400:
            try:
                response.read()
            except httpx.TransportError as exc:
                raise NoAnswer(exc) from exc
            finally:
                response.close()
            raise Answered(response)
        return response

    def close(self) -> None:
        self._inner.close()


class BackupDomains(httpx.BaseTransport):
    """fal-client's failover to fal's backup domains, straight on the transport.

    fal-client's ``BackupDomainTransport`` does this through an inner ``httpx.Client``: a
    second request/response layer and a cookie jar on every call. This does what it does,
    with its own helpers (pinned fal-client 1.0.3): the connect timeout is capped for fal's
    domains, and a connection that could not be made to the primary host is tried once on
    its backup host (the primary's error wins if that fails too).
    """

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self._transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fal_client_module._limit_connect_timeout(request)
        try:
            return self._transport.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            backup = fal_client_module._fallback_url(request.url)
            if backup is None:
                raise
            fal_client_module._log_backup(request.url, backup.host, exc)
            try:
                return self._transport.handle_request(fal_client_module._backup_request(request))
            except (httpx.ConnectError, httpx.ConnectTimeout):
                raise exc from None

    def close(self) -> None:
        self._transport.close()


class NoCookies(httpx.Cookies):
    """A jar that keeps nothing: fal's API authenticates with a header, not cookies."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class FilesClient(httpx.Client):
    """An httpx client that does not parse answers for cookies.

    httpx runs every response through ``http.cookiejar`` (a ``urllib`` request built from
    the URL and headers, a lock): ~80 us of CPU a call, a third of httpx's own share, on
    five calls a job, for cookies neither fal's queue nor its file host needs.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("this client keeps no cookies")


NO_COOKIES = NoCookies()


class QueueClient(fal_client.SyncClient):
    """fal-client's SyncClient on our transport (``_client`` is the one seam it offers)."""

    transport: httpx.BaseTransport | None = None

    @cached_property
    def _client(self) -> httpx.Client:
        return FilesClient(
            transport=self.transport,
            headers={
                "Authorization": self._auth.header_value,
                "User-Agent": fal_client_module.USER_AGENT,
            },
            follow_redirects=True,
        )
