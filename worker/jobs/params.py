"""What a job may ask GPT Image 2 for, validated before anything is written.

``validate_request`` is the one gate: ``worker.jobs.enqueue.enqueue`` (and so the CLI) and the
HTTP API's ``POST /jobs`` both call it, so a request passes or fails the same way
whichever door it comes through. Types are strict (``"2"`` is not a number, ``true`` is
not 1) and ``None`` (JSON ``null``) means "the default".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from imagegen.worker.constants import (
    MAX_DEADLINE_S,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_INPUT_URL_CHARS,
    MAX_NUM_IMAGES,
    MAX_PROMPT_CHARS,
    OUTPUT_FORMATS,
    QUALITIES,
)
from imagegen.worker.errors import JobRequestError
from imagegen.worker.jobs.input_rules import (
    SURROGATE,
    check_callback_url,
    check_text,
    printable,
    shown,
)
from imagegen.worker.jobs.sizes import SIZE_SCHEMA, ImageSize, parse_size
from imagegen.worker.media.inputs import InputSource
from imagegen.worker.settings import Settings, get_settings
from imagegen.worker.tenants.names import MAX_END_USER_CHARS, end_user_problem, name_problem

_KEY_RE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")


def _null_means_default(schema: dict[str, Any]) -> None:
    """Publish that ``null`` is taken for every field with a default (validate_request
    drops it, so the default applies)."""
    for prop in schema["properties"].values():
        if "default" in prop and {"type": "null"} not in prop.get("anyOf", ()):
            core = {
                k: prop.pop(k) for k in list(prop) if k not in ("default", "title", "description")
            }
            prop["anyOf"] = [core, {"type": "null"}]


class JobInput(BaseModel):
    """A generation request (the HTTP API's ``POST /jobs`` body); fal's defaults filled in."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        title="JobIn",
        json_schema_extra=_null_means_default,
    )

    prompt: str = Field(
        json_schema_extra={"minLength": 1, "maxLength": MAX_PROMPT_CHARS},
        description="What to draw: 1 to 32000 characters, no control characters but tab "
        "and newline (user data: stored, never logged).",
    )
    image_size: Annotated[ImageSize, BeforeValidator(parse_size), WithJsonSchema(SIZE_SCHEMA)] = (
        "landscape_4_3"
    )
    quality: str = Field("high", json_schema_extra={"enum": list(QUALITIES)})
    num_images: int = Field(1, json_schema_extra={"minimum": 1, "maximum": MAX_NUM_IMAGES})
    output_format: str = Field("png", json_schema_extra={"enum": list(OUTPUT_FORMATS)})
    deadline_s: float | None = Field(
        None,
        json_schema_extra={"exclusiveMinimum": 0, "maximum": MAX_DEADLINE_S},
        description="Fail the job if not done this many seconds from now "
        "(default IMAGEGEN_JOB_DEADLINE_S).",
    )
    #: not a model input: where the job's JSON is POSTed when it ends (worker.jobs.callbacks)
    callback_url: str | None = Field(
        None,
        description="POSTed the job's JSON (signed) when it ends; needs "
        "IMAGEGEN_CALLBACK_SECRET. Private addresses need IMAGEGEN_CALLBACK_ALLOW_PRIVATE.",
    )

    #: who the job is for: not model inputs (``params()`` leaves them out)
    tenant: str | None = Field(
        None,
        json_schema_extra={"maxLength": 64, "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        description="The tenant that owns the job (default: the default tenant). Only the "
        "operator key may name one; a tenant key's jobs are its tenant's.",
    )
    end_user: str | None = Field(
        None,
        json_schema_extra={"minLength": 1, "maxLength": MAX_END_USER_CHARS},
        description="Your own id of the user the job is for (1-200 printable characters): "
        "kept with the job, for per-user limits.",
    )

    image_urls: list[str] | None = Field(
        None,
        description="An edit job's input images (http(s) URLs; fetched and stored at "
        "enqueue): the job runs on IMAGEGEN_EDIT_MODEL.",
    )
    mask_url: str | None = Field(None, description="Edit: where the first image may change.")
    consent_url: str | None = Field(
        None,
        description="A consent reference for a real person's likeness: stored with the job "
        "and passed to fal as one more input image.",
    )

    @field_validator("image_urls", "mask_url", "consent_url")
    @classmethod
    def _urls(cls, value: list[str] | str | None) -> list[str] | str | None:
        for url in [value] if isinstance(value, str) else value or []:
            if len(url) > MAX_INPUT_URL_CHARS:
                raise ValueError(f"an input URL is longer than {MAX_INPUT_URL_CHARS} characters")
            check_text("an input URL", url)
        if isinstance(value, list) and not value:
            raise ValueError("image_urls is empty: leave it out for a text-to-image job")
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        problem = None if value is None else name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("end_user")
    @classmethod
    def _end_user(cls, value: str | None) -> str | None:
        problem = None if value is None else end_user_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"the prompt has {len(value)} characters; the limit is {MAX_PROMPT_CHARS}"
            )
        check_text("prompt", value)
        if not value.strip():
            raise ValueError("the prompt is empty")
        return value

    @field_validator("quality")
    @classmethod
    def _quality(cls, value: str) -> str:
        return _one_of("quality", value, QUALITIES)

    @field_validator("output_format")
    @classmethod
    def _format(cls, value: str) -> str:
        return _one_of("output format", value, OUTPUT_FORMATS)

    @field_validator("num_images")
    @classmethod
    def _num_images(cls, value: int) -> int:
        if not 1 <= value <= MAX_NUM_IMAGES:
            raise ValueError(f"num_images must be between 1 and {MAX_NUM_IMAGES}")
        return value

    @field_validator("deadline_s")
    @classmethod
    def _deadline(cls, value: float | None) -> float | None:
        # NaN fails every comparison, so it fails this one too
        if value is not None and not 0 < value <= MAX_DEADLINE_S:
            raise ValueError(
                f"deadline_s must be a number of seconds above 0 and at most {MAX_DEADLINE_S} "
                "(7 days)"
            )
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        settings: Settings = (info.context or {})["settings"]
        check_callback_url(value, allow_private=settings.callback_allow_private)
        secret = settings.callback_secret
        if secret is None or not secret.get_secret_value().strip():
            raise ValueError(
                "IMAGEGEN_CALLBACK_SECRET is not set, so callbacks could not be signed: "
                "set it (for the API and the workers) or leave callback_url out"
            )
        return value

    def sources(self) -> list[InputSource]:
        """The input images this request names by URL (uploads come beside it)."""
        found = [
            InputSource("image", url=url, label=f"image_urls[{n}]")
            for n, url in enumerate(self.image_urls or [])
        ]
        if self.mask_url is not None:
            found.append(InputSource("mask", url=self.mask_url, label="mask_url"))
        if self.consent_url is not None:
            found.append(InputSource("consent", url=self.consent_url, label="consent_url"))
        return found

    def params(self) -> dict[str, Any]:
        """The model inputs besides the prompt, as stored in ``jobs.params`` and sent to fal."""
        return self.model_dump(include={"image_size", "quality", "num_images", "output_format"})


class JobRequest(JobInput):
    """A validated request and its idempotency key (an HTTP header, not a body field)."""

    idempotency_key: str | None = None

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not (
            len(value) <= MAX_IDEMPOTENCY_KEY_CHARS and _KEY_RE.match(value)
        ):
            raise ValueError(
                f"the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable "
                "ASCII characters, not starting or ending with a space"
            )
        return value


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {shown(value)}: use one of {', '.join(allowed)}")
    return value


def validate_request(
    fields: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    settings: Settings | None = None,
) -> JobRequest:
    """Build a JobRequest from ``JobInput``'s fields or raise JobRequestError naming every
    problem (``problems``: one ``{field, message}`` each, the HTTP API's 422 body)."""
    data, problems = _fields(fields)
    if idempotency_key is not None:
        data["idempotency_key"] = idempotency_key
    try:
        request = JobRequest.model_validate(data, context={"settings": settings or get_settings()})
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()] + problems
    if problems:
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise JobRequestError(f"invalid job request: {text}", problems) from None
    return request


def _fields(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The fields to validate (``None`` dropped: the default applies), and the problems
    with names pydantic cannot report (a lone surrogate would hide every other problem)."""
    data: dict[str, Any] = {}
    problems: list[dict[str, str]] = []
    for name, value in fields.items():
        if not isinstance(name, str) or SURROGATE.search(name):
            problem = "the field name is not valid UTF-8"
            problems.append({"field": printable(str(name)), "message": problem})
        elif name == "idempotency_key":
            problem = (
                "not a body field: send the Idempotency-Key header (idempotency_key= in Python)"
            )
            problems.append({"field": name, "message": problem})
        elif value is not None:
            data[name] = value
    return data, problems


def _problem(err: Any) -> dict[str, str]:
    where = ".".join(printable(str(p)) for p in err["loc"]) or "request"
    return {"field": where, "message": str(err["msg"]).removeprefix("Value error, ")}
