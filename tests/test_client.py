"""worker.client, the typed HTTP client for web apps, against a real `imagegen api`."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from imagegen.models import JobStatus
from imagegen.worker import contract
from imagegen.worker.client import Client
from imagegen.worker.errors import (
    ConfigurationError,
    IdempotencyConflict,
    JobConflict,
    JobNotFound,
    JobRequestError,
    ServiceUnavailable,
)
from tests.conftest import API_KEY, ROOT, Stack, add_jobs, unique

#: real API or CLI processes against Postgres and Redis: left out of the quick run
pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.start_api(), API_KEY) as imagegen:
        yield imagegen


def test_importing_the_client_loads_no_database_broker_or_settings() -> None:
    heavy = ("sqlalchemy", "celery", "kombu", "fastapi", "fal_client", "imagegen.worker.settings")
    code = f"import sys, imagegen.worker.client; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr


@pytest.mark.slow
def test_enqueue_wait_and_read_typed_jobs(client: Client, stack: Stack) -> None:
    stack.start_worker()
    prompt = unique("a red kite over hills")
    created = client.enqueue(prompt, image_size={"width": 1024, "height": 768}, num_images=2)
    assert isinstance(created, contract.JobCreated)  # its status as the answer left: a worker
    assert created.status in ("queued", "submitting", "at_fal")  # may have taken it by then
    again = client.enqueue(prompt, image_size={"width": 1024, "height": 768}, num_images=2)
    assert again.id != created.id  # no idempotency key: a second job
    job = client.wait(created.id, timeout_s=60, poll_s=0.1)
    assert isinstance(job, contract.JobDetail) and job.status == "succeeded"
    assert len(job.images) == 2 and job.images_stored is True
    assert job.images[0].url.endswith(f"/jobs/{created.id}/images/0")  # the stored copy
    assert job.images[0].fal_url is not None and job.images[0].fal_url.startswith("https://")
    assert job.images[0].width == 1024 and job.attempt_log[0].outcome == "succeeded"
    assert job.deadline_at is not None and job.finished_at is not None
    assert client.health().status == "ok"
    with pytest.raises(JobConflict, match="already succeeded, not cancelled"):
        client.cancel(created.id)


def test_the_operator_enqueues_for_a_tenant_and_its_end_user(client: Client, stack: Stack) -> None:
    from imagegen.worker.tenants.keys import create_tenant

    create_tenant(stack.database_url, "acme")
    created = client.enqueue(unique("a kite"), tenant="acme", end_user="user-7")
    job = client.get(created.id)
    assert job.tenant == "acme" and job.end_user == "user-7"
    with pytest.raises(JobRequestError, match="tenant"):
        client.enqueue(unique("a kite"), tenant="nobody-here")


def test_pages_stats_cancel_and_errors(client: Client, stack: Stack) -> None:
    done = add_jobs(stack.database_url, 5, JobStatus.SUCCEEDED)
    queued = client.enqueue(unique("a fox"), idempotency_key="fox-1").id
    assert client.enqueue("another fox", quality="low").status == "queued"
    listed = [job.id for job in client.iter_jobs(status="succeeded", page_size=2)]
    assert sorted(listed) == sorted(map(str, done))
    page = client.list(limit=1)
    assert len(page.jobs) == 1 and page.next_cursor is not None
    assert client.list(cursor=page.next_cursor, limit=1).jobs[0].id != page.jobs[0].id
    assert client.stats().by_status["succeeded"] == 5
    assert client.cancel(queued) == contract.Cancelled(id=queued, status="cancelled")
    assert client.get(queued).status == "cancelled"

    with pytest.raises(JobRequestError) as invalid:
        client.enqueue("   ", num_images=9)
    assert {p["field"] for p in invalid.value.problems} >= {"prompt", "num_images"}
    with pytest.raises(IdempotencyConflict, match="already used"):
        client.enqueue("not a fox", idempotency_key="fox-1")
    with pytest.raises(JobRequestError) as bad_cursor:
        client.list(cursor="garbage!")
    assert bad_cursor.value.problems[0]["field"] == "cursor"
    with pytest.raises(JobNotFound):
        client.get(str(uuid.uuid4()))
    with pytest.raises(JobNotFound):
        client.cancel(str(uuid.uuid4()))
    assert client.health().status == "degraded"  # no worker here
    assert client.stats().total == 7  # nothing invalid was written


def test_a_wrong_key_and_an_api_that_is_not_there(stack: Stack) -> None:
    with Client(stack.start_api(), "not-the-key") as wrong, pytest.raises(ConfigurationError):
        wrong.stats()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = Client(f"http://127.0.0.1:{port}", API_KEY)
    with gone, pytest.raises(ServiceUnavailable, match="does not answer"):
        gone.get(str(uuid.uuid4()))


@pytest.mark.slow
def test_a_database_that_is_down_is_service_unavailable(stack: Stack) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/imagegen"
    with Client(stack.start_api(extra_env={"DATABASE_URL": url}), API_KEY) as client:
        with pytest.raises(
            ServiceUnavailable, match=re.escape(f"the database {url} does not answer")
        ):
            client.enqueue("a fox")
        assert client.health().status == "unavailable"
