"""The API's published contract (/openapi.json) against what it really sends.

Real responses of a real `imagegen api` are validated against the published schema, by
jsonschema directly and by schemathesis (generated requests, every documented route).
The job JSON is one shape everywhere: the API, `imagegen job/jobs --json`, callbacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import GenerationMode, checks

from imagegen.models import Job as JobRow
from imagegen.models import JobAttempt, JobStatus
from imagegen.worker import contract
from tests.conftest import API_KEY, ROOT, Stack, add_jobs, unique

#: real API or CLI processes against Postgres and Redis: left out of the quick run
pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
RESPONSE_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
IMAGES = [{"url": "https://fal.example/a.png", "width": 1024, "height": 1024}]


@pytest.fixture
def base(stack: Stack) -> str:
    return stack.start_api()


@pytest.fixture
def api(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        yield client


def _check(published: dict[str, Any], path: str, method: str, response: httpx.Response) -> None:
    """Validate a real response against what /openapi.json declares for its status."""
    answers = published["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in answers, (method, path, status, response.text)
    assert response.headers["content-type"] == "application/json", response.text
    pointer = "/".join(
        p.replace("~", "~0").replace("/", "~1")
        for p in ("paths", path, method.lower(), "responses", status, "content")
    )
    resource = Resource.from_contents(published, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:api", resource)
    ref = {"$ref": f"urn:api#/{pointer}/application~1json/schema"}
    jsonschema.Draft202012Validator(ref, registry=registry).validate(response.json())


def test_the_model_is_every_column_of_the_row() -> None:
    # and the tenant's name beside its id (issue 24)
    assert set(contract.Job.model_fields) == set(JobRow.__table__.columns.keys()) | {"tenant"}
    attempt_columns = set(JobAttempt.__table__.columns.keys()) - {"id", "job_id"}
    assert set(contract.Attempt.model_fields) == attempt_columns
    assert set(contract.Job.model_fields["status"].annotation.__args__) == {  # type: ignore[union-attr]
        s.value for s in JobStatus
    }


def test_no_fastapi_default_error_schema_is_published(api: httpx.Client) -> None:
    published = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in published["components"]["schemas"]
    post = published["paths"]["/jobs"]["post"]["responses"]
    assert post["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationErrorBody"
    }
    read = published["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"]
    assert read["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobDetail"
    }


def test_real_answers_match_the_published_schema(api: httpx.Client, stack: Stack) -> None:
    published = api.get("/openapi.json").json()
    created = api.post("/jobs", json={"prompt": unique("a kite"), "deadline_s": 60})
    _check(published, "/jobs", "POST", created)
    queued = created.json()["id"]
    [done] = add_jobs(stack.database_url, 1, JobStatus.SUCCEEDED, images=IMAGES)
    for job_id in (queued, done):
        _check(published, "/jobs/{job_id}", "GET", api.get(f"/jobs/{job_id}"))
    job = api.get(f"/jobs/{queued}").json()
    assert job["images"] == [] and job["deadline_at"] and job["callback_url"] is None
    assert set(job) == set(contract.JobDetail.model_fields)
    [image] = api.get(f"/jobs/{done}").json()["images"]
    # not stored: url is fal's, and fal_url says so too
    expected = {**dict.fromkeys(contract.Image.model_fields), **IMAGES[0]}
    assert image == {**expected, "fal_url": IMAGES[0]["url"]}
    page = api.get("/jobs", params={"limit": 1, "status": "queued"})
    _check(published, "/jobs", "GET", page)
    assert page.json()["jobs"][0]["images"] == []
    _check(published, "/stats", "GET", api.get("/stats"))
    _check(published, "/healthz", "GET", api.get("/healthz"))
    errors = [
        ("POST", "/jobs", api.post("/jobs", json={"prompt": 5, "num_images": "many"})),
        ("POST", "/jobs", api.post("/jobs", content=b"{not", headers=_JSON)),
        ("POST", "/jobs", api.post("/jobs", content=b"x" * 1_100_000, headers=_JSON)),
        ("GET", "/jobs", api.get("/jobs", params={"cursor": "garbage!"})),
        ("GET", "/jobs/{job_id}", api.get(f"/jobs/{uuid.uuid4()}")),
        ("GET", "/jobs/{job_id}", api.get("/jobs/not-a-uuid")),
        ("POST", "/jobs/{job_id}/cancel", api.post(f"/jobs/{done}/cancel")),
        ("POST", "/jobs/{job_id}/cancel", api.post(f"/jobs/{queued}/cancel")),
        ("GET", "/stats", api.get("/stats", headers={"Authorization": "Bearer wrong"})),
    ]
    assert [r.status_code for _, _, r in errors] == [422, 422, 413, 422, 404, 422, 409, 200, 401]
    for method, path, response in errors:
        _check(published, path, method, response)


_JSON = {"content-type": "application/json"}


def test_the_job_json_is_the_same_from_the_api_and_the_cli(api: httpx.Client, stack: Stack) -> None:
    [done] = add_jobs(stack.database_url, 1, JobStatus.SUCCEEDED, images=IMAGES)
    add_jobs(stack.database_url, 2, JobStatus.QUEUED, callback_url="https://app.example/hook")
    env = {**os.environ, **stack.env}

    def cli(*args: str) -> Any:
        cmd = [sys.executable, "-m", "imagegen.worker.cli", *args, "--json"]
        done_ = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, check=True)
        return json.loads(done_.stdout)

    assert cli("job", str(done)) == api.get(f"/jobs/{done}").json()
    listed = cli("jobs")
    assert listed == api.get("/jobs").json()["jobs"] and len(listed) == 3
    assert {tuple(j["images"]) == () for j in listed} == {True, False}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_generated_requests_get_the_documented_answers(base: str) -> None:
    """schemathesis: requests generated from the schema, valid and not, at every route;
    each answer must be documented (status, content type, body) and none a 500. (Whether
    the request schema is as strict as enqueue's validation is tests/test_params.py's.)"""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/fal/webhook":  # signed by fal: every request gets a 401
            continue
        strategy = st.one_of(*(operation.as_strategy(generation_mode=m) for m in modes))

        @given(case=strategy)
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(headers=AUTH, checks=RESPONSE_CHECKS)

        run()
