"""The dashboard in-process (Starlette's TestClient) on real Postgres and a real local store.

Two tenants with a key each; jobs are rows written straight into the table
(``tests.conftest.add_jobs``) in the state a test needs. No worker, no server process.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from imagegen.models import JobStatus
from imagegen.worker.media.storage import Storage, open_storage
from imagegen.worker.tenants import keys
from tests.conftest import API_KEY, add_jobs, fresh_database
from tests.stored_jobs import put


@dataclass
class Dash:
    database_url: str
    storage: Storage
    settings: Any
    a_key: str
    b_key: str
    a_key_id: uuid.UUID
    tenants: dict[str, uuid.UUID]

    def client(self, key: str | None = None, **options: Any) -> TestClient:
        """A client of a fresh app; ``key``: sent as a bearer header on every request."""
        from imagegen.worker.web.app import create_app

        app = create_app(self.settings)
        app.state.storage = self.storage
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return TestClient(app, headers=headers, follow_redirects=False, **options)

    def logged_in(self, key: str, **options: Any) -> TestClient:
        client = self.client(**options)
        answer = client.post("/ui/login", data={"key": key})
        assert answer.status_code == 303, answer.text
        return client

    def job(self, status: JobStatus = JobStatus.QUEUED, *, tenant: str = "a", **values: Any) -> str:
        (job_id,) = add_jobs(self.database_url, 1, status, tenant_id=self.tenants[tenant], **values)
        return str(job_id)

    def stored_job(self, *, tenant: str = "a", size: tuple[int, int] = (400, 300)) -> str:
        """A succeeded job whose image 0 is a real PNG in the store."""
        from PIL import Image

        job_id = uuid.uuid4()
        data = io.BytesIO()
        Image.new("RGB", size, (200, 40, 40)).save(data, "PNG")
        key = f"jobs/{job_id}/0.png"
        put(self.storage, key, data.getvalue())
        image = {"url": "https://fal.example/x.png", "storage_key": key, "width": size[0]}
        add_jobs(
            self.database_url,
            1,
            JobStatus.SUCCEEDED,
            id=job_id,
            tenant_id=self.tenants[tenant],
            images=[{**image, "height": size[1], "content_type": "image/png"}],
            images_stored=True,
        )
        return str(job_id)


@pytest.fixture(scope="session")
def ui_database(pg_template: str) -> Iterator[str]:
    """One database for the dashboard's tests, emptied before each (faster than a clone
    and a drop per test: these tests run in the quick run)."""
    with fresh_database(pg_template) as url:
        yield url


#: what a test writes; the default tenant (a migration's row) stays
_EMPTIED = "jobs, job_attempts, job_counts, job_hours, cooldowns, tenant_keys, fal_webhooks"


@pytest.fixture
def database_url(ui_database: str) -> str:
    from sqlalchemy import text

    from imagegen.models import DEFAULT_TENANT_ID
    from imagegen.worker.db import get_engine

    with get_engine(ui_database).begin() as db:
        db.execute(text(f"TRUNCATE {_EMPTIED} CASCADE"))
        db.execute(text("DELETE FROM tenants WHERE id <> :keep"), {"keep": DEFAULT_TENANT_ID})
    return ui_database


@pytest.fixture
def dash(database_url: str, tmp_path: Path) -> Iterator[Dash]:
    from imagegen.worker.settings import Settings

    tenants = {}
    for short in ("a", "b"):
        tenants[short] = keys.create_tenant(database_url, f"tenant-{short}").id
    a_new = keys.create_key(database_url, "tenant-a")
    b_new = keys.create_key(database_url, "tenant-b")
    settings = Settings(  # type: ignore[call-arg]
        DATABASE_URL=database_url,
        IMAGEGEN_API_KEY=API_KEY,
        REDIS_URL="sqla+sqlite:///" + str(tmp_path / "broker.db"),  # no Redis: local limiter
    )
    storage = open_storage("file:" + str(tmp_path / "store"))
    yield Dash(database_url, storage, settings, a_new.key, b_new.key, a_new.info.id, tenants)


def job_ids(html: str) -> list[str]:
    """The job rows of a jobs page, in order."""
    return re.findall(r'<tr class="job" data-job-id="([0-9a-f-]+)"', html)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)
