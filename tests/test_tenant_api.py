"""The HTTP API with tenant keys: each tenant sees only its own jobs (issue 24 item 1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from imagegen.worker.tenants import keys
from tests.conftest import API_KEY, Stack

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]  # a real `imagegen api` process


@dataclass
class Clients:
    operator: httpx.Client
    a: httpx.Client
    b: httpx.Client
    base: str
    b_key_id: uuid.UUID


def _client(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture
def clients(stack: Stack) -> Iterator[Clients]:
    for name in ("tenant-a", "tenant-b"):
        keys.create_tenant(stack.database_url, name)
    a_key = keys.create_key(stack.database_url, "tenant-a").key
    b_new = keys.create_key(stack.database_url, "tenant-b")
    base = stack.start_api()
    with _client(base, API_KEY) as op, _client(base, a_key) as a, _client(base, b_new.key) as b:
        yield Clients(op, a, b, base, b_new.info.id)


def _create(client: httpx.Client, **fields: object) -> str:
    answer = client.post("/jobs", json={"prompt": "a fox", **fields})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_a_tenant_cannot_see_read_cancel_delete_or_fetch_another_tenants_job(
    clients: Clients,
) -> None:
    b_job = _create(clients.b, end_user="b-user")
    a_job = _create(clients.a)
    unknown = str(uuid.uuid4())
    for method, path in [
        ("GET", "/jobs/{}"),
        ("GET", "/jobs/{}/images/0"),
        ("DELETE", "/jobs/{}"),
        ("POST", "/jobs/{}/cancel"),
    ]:
        theirs = clients.a.request(method, path.format(b_job))
        nobody = clients.a.request(method, path.format(unknown))
        assert theirs.status_code == nobody.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["detail"] == nobody.json()["detail"].replace(unknown, b_job)
    mine = clients.b.get(f"/jobs/{b_job}").json()
    assert (mine["status"], mine["prompt"]) == ("queued", "a fox")  # untouched by A
    assert (mine["tenant"], mine["end_user"]) == ("tenant-b", "b-user")
    assert [j["id"] for j in clients.a.get("/jobs").json()["jobs"]] == [a_job]
    assert [j["id"] for j in clients.b.get("/jobs").json()["jobs"]] == [b_job]
    everyone = {j["id"]: j["tenant"] for j in clients.operator.get("/jobs").json()["jobs"]}
    assert everyone == {a_job: "tenant-a", b_job: "tenant-b"}
    assert clients.operator.get(f"/jobs/{b_job}").status_code == 200
    assert clients.a.get("/stats").json()["total"] == 1
    assert clients.operator.get("/stats").json()["total"] == 2
    assert clients.a.get("/metrics").status_code == 403  # fleet-wide: the operator's
    cancelled = clients.b.post(f"/jobs/{b_job}/cancel")
    assert cancelled.status_code == 200, cancelled.text


def test_the_tenant_of_a_job_is_the_keys_or_the_operators_choice(clients: Clients) -> None:
    other = clients.a.post("/jobs", json={"prompt": "a fox", "tenant": "tenant-b"})
    assert other.status_code == 422
    assert other.json()["detail"][0]["field"] == "tenant"
    own = _create(clients.a, tenant="tenant-a")
    assert clients.a.get(f"/jobs/{own}").json()["tenant"] == "tenant-a"
    chosen = _create(clients.operator, tenant="tenant-b")
    assert clients.b.get(f"/jobs/{chosen}").status_code == 200
    assert clients.operator.get(f"/jobs/{_create(clients.operator)}").json()["tenant"] == "default"
    unknown = clients.operator.post("/jobs", json={"prompt": "a fox", "tenant": "nobody"})
    assert unknown.status_code == 422 and "unknown tenant 'nobody'" in unknown.text
    upload = clients.a.post("/jobs/uploads", data={"job": '{"prompt": "x", "tenant": "tenant-b"}'})
    assert upload.status_code == 422 and "tenant" in upload.text
    assert len(clients.operator.get("/jobs").json()["jobs"]) == 3  # nothing else written


def test_unknown_and_revoked_keys_are_401(clients: Clients, stack: Stack) -> None:
    assert clients.b.get("/jobs").status_code == 200
    keys.revoke_key(stack.database_url, clients.b_key_id)
    assert clients.b.get("/jobs").status_code == 401
    assert clients.b.post("/jobs", json={"prompt": "x"}).status_code == 401
    for key in ("igk_" + "x" * 43, "not-a-key", "igk_"):
        with _client(clients.base, key) as stranger:
            assert stranger.get("/jobs").status_code == 401, key
            assert stranger.post("/jobs", json={"prompt": "x"}).status_code == 401, key
