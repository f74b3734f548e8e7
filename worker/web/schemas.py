"""Request and response bodies of the HTTP API (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from worker.params import JobInput

#: A generation request: ``worker.params.JobInput`` itself, so the HTTP API and
#: ``worker.enqueue`` accept and refuse exactly the same requests.
JobIn = JobInput


class JobCreated(BaseModel):
    id: str
    status: str


class JobPage(BaseModel):
    jobs: list[dict[str, Any]]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null on the last page."
    )


class Problem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    detail: str | list[Problem]
