"""The Python enqueue API and the HTTP API's POST /jobs refuse the same hostile inputs the
same way: JobRequestError in Python, a 422 ``{detail: [{field, message}]}`` over HTTP, the
same fields named, and nothing written."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from imagegen.models import Job
from imagegen.worker.db import session_scope
from imagegen.worker.errors import JobRequestError
from imagegen.worker.jobs import enqueue as api
from imagegen.worker.web.app import create_app
from tests.conftest import API_KEY, Stack

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SECRET = {"IMAGEGEN_API_KEY": API_KEY, "IMAGEGEN_CALLBACK_SECRET": "parity-secret"}
#: a blank secret is no secret (it would sign with an empty key)
NO_SECRET = {"IMAGEGEN_API_KEY": API_KEY, "IMAGEGEN_CALLBACK_SECRET": " "}
#: keyword names of worker.jobs.enqueue.enqueue where they differ from the body's
KWARGS = {"image_size": "size"}


@dataclass(frozen=True)
class Case:
    """A hostile request: its body fields, its idempotency key, the fields to be named."""

    name: str
    body: dict[str, Any]
    fields: frozenset[str]
    key: str | None = None
    #: the JSON text to send when json.dumps cannot spell it (1e309)
    raw: str | None = None


def case(
    name: str, fields: str, key: str | None = None, raw: str | None = None, **body: Any
) -> Case:
    return Case(name, {"prompt": "a fox", **body}, frozenset(fields.split()), key, raw)


CASES = [
    case("prompt-int", "prompt", prompt=42),
    case("prompt-list", "prompt", prompt=["a", "fox"]),
    case("prompt-bool", "prompt", prompt=True),
    case("prompt-empty", "prompt", prompt=""),
    case("prompt-whitespace", "prompt", prompt=" \n\t "),
    case("prompt-too-long", "prompt", prompt="x" * 32_001),
    case("prompt-nul", "prompt", prompt="a\x00fox"),
    case("prompt-esc", "prompt", prompt="a \x1b[31mred\x1b[0m fox"),
    case("prompt-osc-title", "prompt", prompt="\x1b]0;owned\x07a fox"),
    case("prompt-cr", "prompt", prompt="a fox\rhidden"),
    case("prompt-backspace", "prompt", prompt="a fox\x08\x08"),
    case("prompt-c1-csi", "prompt", prompt="a \x9b2J fox"),
    case("prompt-lone-surrogate", "prompt", prompt="caf\udce9"),
    case("prompt-high-surrogate", "prompt", prompt="\ud83d fox"),
    case("num-images-str", "num_images", num_images="2"),
    case("num-images-bool", "num_images", num_images=True),
    case("num-images-float", "num_images", num_images=2.0),
    case("num-images-zero", "num_images", num_images=0),
    case("num-images-five", "num_images", num_images=5),
    case("num-images-huge", "num_images", num_images=10**40),
    case("num-images-negative", "num_images", num_images=-1),
    case("size-16", "image_size", image_size="16x16"),
    case("size-3840-square", "image_size", image_size="3840x3840"),
    case("size-not-16", "image_size", image_size="1000x1000"),
    case("size-edge", "image_size", image_size="3856x2048"),
    case("size-ratio", "image_size", image_size="3072x1008"),
    case("size-preset-typo", "image_size", image_size="landscape_21_9"),
    case("size-dict-extra", "image_size", image_size={"width": 1024, "height": 1024, "d": 1}),
    case("size-dict-str", "image_size", image_size={"width": "1024", "height": 1024}),
    case("size-dict-bool", "image_size", image_size={"width": True, "height": 1024}),
    case("size-int", "image_size", image_size=1024),
    case("size-huge", "image_size", image_size={"width": 10**40, "height": 1024}),
    case("quality-unknown", "quality", quality="ultra"),
    case("quality-case", "quality", quality="HIGH"),
    case("quality-int", "quality", quality=3),
    case("format-unknown", "output_format", output_format="gif"),
    case("format-esc", "output_format", output_format="\x1b[2Jpng"),
    case("deadline-nan", "deadline_s", deadline_s=float("nan")),
    case("deadline-inf", "deadline_s", deadline_s=float("inf")),
    case("deadline-minus-inf", "deadline_s", deadline_s=float("-inf")),
    case(
        "deadline-1e309",
        "deadline_s",
        raw='{"prompt": "a fox", "deadline_s": 1e309}',
        deadline_s=float("inf"),
    ),
    case("deadline-negative", "deadline_s", deadline_s=-5),
    case("deadline-zero", "deadline_s", deadline_s=0),
    case("deadline-absurd", "deadline_s", deadline_s=1e12),
    case("deadline-huge-int", "deadline_s", deadline_s=10**400),
    case("deadline-str", "deadline_s", deadline_s="60"),
    case("deadline-bool", "deadline_s", deadline_s=True),
    case("key-too-long", "idempotency_key", key="k" * 201),
    case("key-tab", "idempotency_key", key="order\t42"),
    case("key-latin1", "idempotency_key", key="caf\u00e9"),
    case("callback-ftp", "callback_url", callback_url="ftp://example.com/hook"),
    case("callback-no-host", "callback_url", callback_url="https:///hook"),
    case("callback-loopback", "callback_url", callback_url="http://127.0.0.1:9000/hook"),
    case("callback-localhost", "callback_url", callback_url="http://localhost/hook"),
    case("callback-private", "callback_url", callback_url="http://192.168.1.10/hook"),
    case("callback-metadata", "callback_url", callback_url="http://169.254.169.254/latest"),
    case("callback-decimal-ip", "callback_url", callback_url="http://2130706433/hook"),
    case("callback-v6-loopback", "callback_url", callback_url="http://[::1]/hook"),
    case("callback-credentials", "callback_url", callback_url="https://u:pw@example.com/h"),
    case("callback-bad-port", "callback_url", callback_url="https://example.com:99999/h"),
    case("callback-esc", "callback_url", callback_url="https://example.com/\x1b[0m"),
    case("callback-too-long", "callback_url", callback_url="https://example.com/" + "a" * 2000),
    case("unknown-field", "seed", seed=42),
    case("field-name-esc", "x\\x1b[2J", **{"x\x1b[2J": 1}),
    case("field-name-surrogate", "\\udce9", **{"\udce9": 1}),
    case("many-problems", "prompt quality num_images", prompt=" ", quality="x", num_images=9),
]


class Http:
    """POSTs to the API app in process (its ASGI interface), or to a running ``imagegen api``."""

    def __init__(self, app: FastAPI | None = None, base_url: str | None = None) -> None:
        self.app, self.base_url = app, base_url

    def post(self, content: bytes, headers: dict[str, str | bytes]) -> httpx.Response:
        if self.base_url is not None:
            return httpx.post(
                f"{self.base_url}/jobs", content=content, headers={**AUTH, **headers}, timeout=10
            )
        return asyncio.run(self._post(content, headers))

    async def _post(self, content: bytes, headers: dict[str, str | bytes]) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/jobs", content=content, headers={**AUTH, **headers})


@pytest.fixture
def http(stack: Stack) -> Http:
    return Http(create_app(stack.settings(**SECRET), celery=stack.app()))


def python_problems(stack: Stack, c: Case, env: dict[str, str]) -> list[dict[str, str]]:
    body = dict(c.body)
    kwargs = {KWARGS.get(k, k): v for k, v in body.items() if k != "prompt"}
    with pytest.raises(JobRequestError) as info:
        api.enqueue(
            body["prompt"],
            idempotency_key=c.key,
            settings=stack.settings(**env),
            app=stack.app(),
            **kwargs,
        )
    return info.value.problems


def http_problems(client: Http, c: Case) -> list[dict[str, str]]:
    content = c.raw if c.raw is not None else json.dumps(c.body)  # NaN, \udce9 escaped
    headers: dict[str, str | bytes] = {"content-type": "application/json"}
    if c.key is not None:
        headers["Idempotency-Key"] = c.key.encode("latin-1")  # as HTTP spells header text
    reply = client.post(content.encode(), headers)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, list) and all(set(p) == {"field", "message"} for p in detail)
    return list(detail)


def unsupported(c: Case) -> bool:
    """Some calls only one door can spell: a JSON body's unknown key is a Python TypeError."""
    return any(k not in ("prompt", *KWARGS, *api.enqueue.__kwdefaults__) for k in c.body)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_both_apis_refuse_alike(stack: Stack, http: Http, c: Case) -> None:
    over_http = http_problems(http, c)
    assert {p["field"] for p in over_http} == c.fields, over_http
    for problem in over_http:  # one printable line, nothing a terminal would obey
        assert problem["message"].isprintable() and problem["field"].isprintable()
    if unsupported(c):
        with pytest.raises(TypeError):
            python_problems(stack, c, SECRET)
    else:
        assert python_problems(stack, c, SECRET) == over_http
    with session_scope(stack.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_callback_without_the_secret_is_refused_by_both(stack: Stack) -> None:
    c = case("callback-no-secret", "callback_url", callback_url="https://example.com/hook")
    client = Http(create_app(stack.settings(**NO_SECRET), celery=stack.app()))
    over_http = http_problems(client, c)
    assert over_http == python_problems(stack, c, NO_SECRET)
    assert "IMAGEGEN_CALLBACK_SECRET is not set" in over_http[0]["message"]


def test_valid_requests_pass_both(stack: Stack, http: Http) -> None:
    """The same inputs, well formed, are queued by both (so the refusals above are real)."""
    body = {
        "prompt": "a fox\n\twith a hat, caf\u00e9 \U0001f98a",
        "image_size": {"width": 1024, "height": 640},
        "num_images": 2,
        "deadline_s": 60,
        "callback_url": "https://example.com/hook",
    }
    headers: dict[str, str | bytes] = {
        "content-type": "application/json",
        "Idempotency-Key": f"http-{uuid.uuid4()}",
    }
    reply = http.post(json.dumps(body).encode(), headers)
    assert reply.status_code == 201, reply.text
    job_id = api.enqueue(
        body["prompt"],
        size=body["image_size"],
        num_images=2,
        deadline_s=60,
        callback_url=body["callback_url"],
        idempotency_key=f"py-{uuid.uuid4()}",
        settings=stack.settings(**SECRET),
        app=stack.app(),
    )
    with session_scope(stack.database_url) as session:
        jobs = session.scalars(select(Job)).all()
        assert {str(j.id) for j in jobs} == {reply.json()["id"], str(job_id)}
        assert {j.params["num_images"] for j in jobs} == {2}


def test_a_body_that_is_not_an_object_is_a_422(http: Http) -> None:
    for content in (b"[1, 2]", b'"a fox"', b"null", b"{not json"):
        reply = http.post(content, {"content-type": "application/json"})
        assert reply.status_code == 422, (content, reply.text)
        assert isinstance(reply.json()["detail"], list)


@pytest.mark.slow
def test_the_running_api_refuses_the_whole_table_like_python(stack: Stack) -> None:
    """The same table through `imagegen api` (uvicorn, real HTTP parsing of headers)."""
    client = Http(base_url=stack.start_api(extra_env=SECRET))
    mismatches = []
    for c in CASES:
        over_http = http_problems(client, c)
        expected = None if unsupported(c) else python_problems(stack, c, SECRET)
        if {p["field"] for p in over_http} != c.fields or expected not in (None, over_http):
            mismatches.append((c.name, over_http, expected))
    assert not mismatches
    with session_scope(stack.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_the_key_in_the_body_is_refused(http: Http) -> None:
    body = json.dumps({"prompt": "a fox", "idempotency_key": "k1"}).encode()
    reply = http.post(body, {"content-type": "application/json"})
    assert reply.status_code == 422
    assert "Idempotency-Key header" in reply.json()["detail"][0]["message"]
