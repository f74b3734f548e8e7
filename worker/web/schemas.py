"""Request and response bodies of the HTTP API (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Size(BaseModel):
    width: int
    height: int


class JobIn(BaseModel):
    """A generation request; validated exactly like ``worker.enqueue``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What to draw (user data: stored, never logged).")
    image_size: str | Size | None = Field(
        None, description="A preset (landscape_4_3, ...), WIDTHxHEIGHT or {width, height}."
    )
    quality: str | None = Field(None, description="auto, low, medium or high (default high).")
    num_images: int | None = Field(None, description="1 to 4 (default 1).")
    output_format: str | None = Field(None, description="jpeg, png or webp (default png).")
    deadline_s: float | None = Field(None, gt=0, description="Fail the job if not done by then.")
    callback_url: str | None = Field(
        None, description="POSTed the job's JSON (HMAC-signed) when it ends."
    )


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
