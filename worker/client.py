"""A typed client for imagegen's HTTP API, for a web app that runs elsewhere.

    from worker.client import Client

    with Client("http://imagegen-api:8000", api_key=key) as imagegen:
        created = imagegen.enqueue("a red kite over hills", image_size="landscape_4_3")
        job = imagegen.wait(created.id)
        urls = [image.url for image in job.images]

It imports httpx, pydantic and ``worker.errors`` only: no database, broker or Celery, and
no settings are read. Answers are parsed into ``worker.contract``'s models (the API's
OpenAPI schemas). Errors are the project's: ``JobRequestError`` (422, 413; ``problems``
lists ``{field, message}``), ``IdempotencyConflict`` (a 422 naming ``Idempotency-Key``),
``JobNotFound`` (404), ``JobConflict`` (409), ``ConfigurationError`` (401: the
key), ``ServiceUnavailable`` (503, or no answer), ``ApiError`` for anything else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from imagegen.worker.contract import (
    Cancelled,
    Health,
    Job,
    JobCreated,
    JobDetail,
    JobPage,
    Stats,
    Status,
)
from imagegen.worker.errors import (
    ApiError,
    ConfigurationError,
    IdempotencyConflict,
    JobConflict,
    JobNotFound,
    JobRequestError,
    ServiceUnavailable,
)

M = TypeVar("M", bound=BaseModel)
TERMINAL: frozenset[str] = frozenset({"succeeded", "refused", "failed", "cancelled"})


class Client:
    """One API, one connection pool; use it as a context manager or call ``close``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            transport=transport,
        )

    def enqueue(
        self,
        prompt: str,
        *,
        image_size: str | Mapping[str, int] | None = None,
        quality: str | None = None,
        num_images: int | None = None,
        output_format: str | None = None,
        deadline_s: float | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        tenant: str | None = None,
        end_user: str | None = None,
    ) -> JobCreated:
        """Queue a generation (``POST /jobs``); a repeated idempotency key gives the same job.

        ``tenant``: the operator key only (a tenant key's jobs are its own); ``end_user``:
        the web app's user id, for the per-user cool-down."""
        fields = {
            "prompt": prompt,
            "image_size": dict(image_size) if isinstance(image_size, Mapping) else image_size,
            "quality": quality,
            "num_images": num_images,
            "output_format": output_format,
            "deadline_s": deadline_s,
            "callback_url": callback_url,
            "tenant": tenant,
            "end_user": end_user,
        }
        body = {k: v for k, v in fields.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call(JobCreated, "POST", "/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> JobDetail:
        """One job with its attempt log."""
        return self._call(JobDetail, "GET", f"/jobs/{job_id}")

    def list(
        self,
        *,
        status: Status | None = None,
        category: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page, newest first; pass its ``next_cursor`` as ``cursor`` for the next."""
        params: dict[str, Any] = {"limit": limit}
        for name, value in (("status", status), ("category", category), ("cursor", cursor)):
            if value is not None:
                params[name] = value
        if since is not None:
            params["since"] = since.isoformat()
        return self._call(JobPage, "GET", "/jobs", params=params)

    def iter_jobs(
        self,
        *,
        status: Status | None = None,
        category: str | None = None,
        since: datetime | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every matching job, newest first, a page at a time."""
        cursor: str | None = None
        while True:
            page = self.list(
                status=status, category=category, since=since, limit=page_size, cursor=cursor
            )
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Cancelled:
        """Cancel a queued or running job; ``JobConflict`` if it had ended otherwise."""
        return self._call(Cancelled, "POST", f"/jobs/{job_id}/cancel")

    def stats(self) -> Stats:
        return self._call(Stats, "GET", "/stats")

    def health(self) -> Health:
        """``/healthz``, whatever it says (a 503 is a Health too, status ``unavailable``)."""
        response = self._send("GET", "/healthz")
        if response.status_code not in (200, 503):
            _raise(response)
        return _parse(Health, response)

    def wait(self, job_id: str, *, timeout_s: float = 900.0, poll_s: float = 1.0) -> JobDetail:
        """Poll until the job ended; raises TimeoutError if it has not after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job.status in TERMINAL:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s:g} s")
            time.sleep(poll_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = self._send(method, path, **kwargs)
        if response.is_error:
            _raise(response)
        return _parse(model, response)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            where = str(self._http.base_url)
            raise ServiceUnavailable(
                f"the imagegen API at {where} does not answer ({type(exc).__name__})",
                service="api",
                dsn=where,
            ) from exc


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ApiError(
            f"the API's answer is not a {model.__name__}: {exc.errors()[0]['msg']}",
            response.status_code,
        ) from None


def _raise(response: httpx.Response) -> None:
    status = response.status_code
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if status in (413, 422):
        problems = detail if isinstance(detail, list) else [{"field": "body", "message": detail}]
        problems = [
            {"field": str(p.get("field")), "message": str(p.get("message"))} for p in problems
        ]
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        kind = JobRequestError
        if any(p["field"] == "Idempotency-Key" for p in problems):
            kind = IdempotencyConflict
        raise kind(f"invalid job request: {message}", problems)
    text = detail if isinstance(detail, str) else response.text[:200] or response.reason_phrase
    if status == 404:
        raise JobNotFound(text)
    if status == 409:
        raise JobConflict(text)
    if status == 401:
        raise ConfigurationError(f"the imagegen API refused the key: {text}")
    if status == 503:
        raise ServiceUnavailable(
            text, service="api", dsn=str(response.request.url.copy_with(path="/"))
        )
    raise ApiError(f"the imagegen API answered {status}: {text}", status)
