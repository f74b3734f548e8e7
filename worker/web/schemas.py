"""Request and response bodies of the HTTP API (they are also its OpenAPI schema).

The response bodies live in ``worker.contract`` (shared with ``worker.client``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from worker.contract import ErrorBody, JobCreated, JobPage, Problem, ValidationErrorBody

__all__ = [
    "ErrorBody",
    "JobCreated",
    "JobIn",
    "JobPage",
    "Problem",
    "Size",
    "ValidationErrorBody",
]


#: beyond this a deadline means nothing (and past ~1e13 s no datetime can hold it)
MAX_DEADLINE_S = 30 * 86400


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
    deadline_s: float | None = Field(
        None,
        gt=0,
        le=MAX_DEADLINE_S,
        allow_inf_nan=False,
        description="Fail the job if not done this many seconds from now (at most 30 days).",
    )
    callback_url: str | None = Field(
        None, description="POSTed the job's JSON (HMAC-signed) when it ends."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _utf8(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON's \\ud800-style escapes can spell lone surrogates, which no database stores."""
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise PydanticCustomError("utf8", f"{info.field_name} is not valid UTF-8") from None
        return value
