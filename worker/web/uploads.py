"""Edit jobs with their input images uploaded (multipart), beside ``POST /jobs``'s URLs."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Request, UploadFile

from imagegen.worker.errors import JobRequestError
from imagegen.worker.jobs import enqueue as api
from imagegen.worker.jobs.params import validate_request
from imagegen.worker.media.inputs import InputSource

from .auth import owned_fields
from .errors import RESPONSES, TOO_LARGE, UPLOADS_PATH
from .schemas import ErrorBody, JobCreated

router = APIRouter(tags=["jobs"], responses=RESPONSES)


#: FastAPI's answer to a multipart body it cannot parse
_UNPARSED: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The multipart body could not be parsed"}
}


@router.post(
    UPLOADS_PATH, status_code=201, response_model=JobCreated, responses={**TOO_LARGE, **_UNPARSED}
)
def create_edit_job(
    request: Request,
    job: Annotated[str, Form(description="The job as JSON, as POST /jobs takes it.")],
    image: Annotated[list[UploadFile] | None, File(description="Input images.")] = None,
    mask: Annotated[UploadFile | None, File(description="Where the first image changes.")] = None,
    consent: Annotated[UploadFile | None, File(description="A consent reference.")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobCreated:
    """Queue an edit job: each uploaded image is checked by its content (type, bytes,
    dimensions) and stored before the job is queued; a bad one is a 422, nothing queued."""
    settings = request.app.state.settings
    fields = owned_fields(request, _job_fields(job))  # a tenant key's job is its tenant's
    job_request = validate_request(fields, idempotency_key=idempotency_key, settings=settings)
    uploads = [_source("image", f"image[{n}]", part) for n, part in enumerate(image or [])]
    uploads += [_source(r, r, p) for r, p in (("mask", mask), ("consent", consent)) if p]
    if not uploads and not job_request.sources():
        raise JobRequestError("no input image: send an image part (or use POST /jobs)")
    job_id = api.enqueue_request(
        job_request, settings=settings, app=request.app.state.celery, uploads=uploads
    )
    return JobCreated(id=str(job_id), status="queued")


def _job_fields(raw: str) -> dict[str, Any]:
    try:
        fields = json.loads(raw)
    except ValueError as exc:
        raise JobRequestError(
            "the job part is not JSON", [{"field": "job", "message": f"not JSON: {exc}"}]
        ) from None
    if not isinstance(fields, dict):
        raise JobRequestError("the job part must be a JSON object")
    return fields


def _source(role: str, field: str, part: UploadFile) -> InputSource:
    name = part.filename or field
    return InputSource(role, stream=part.file, label=f"{field} ({name})")
