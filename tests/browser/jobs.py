"""The jobs the browser tests look at, made by the real worker on the fal emulator.

Three callers: the operator (the default tenant's jobs) and tenants ``alpha`` and ``beta``,
made with ``imagegen tenant create`` and ``imagegen tenant key create``. A queued job stays
queued because its message goes to a Redis database no worker reads (its row is real).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import Stack

LIGHTHOUSE = "a lighthouse at dawn, long exposure"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> a fox'
FAL_REFUSED = "[[fal:refuse:trademark_ip]] a cartoon mouse mascot"
PREFILTER_REFUSED = "a photo of Taylor Swift on stage"  # the rules pre-filter refuses it
QUEUED = "a harbour at night, never picked up"
ALPHA_OK = "alpha's orchard at noon"
ALPHA_REFUSED = "[[fal:refuse:hate_protected_group]] a banner"
BETA_OK = "beta's secret harbour"


@dataclass
class Jobs:
    """Job ids by role, and the keys that log in."""

    operator_key: str
    alpha_key: str = ""
    beta_key: str = ""
    ids: dict[str, uuid.UUID] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, role: str) -> uuid.UUID:
        return self.ids[role]


def imagegen(env: dict[str, str], *args: str) -> str:
    """The CLI as operators run it, in its own process (in this one it would configure this
    process's logging for the tests that come after), on the stack's database."""
    cmd = [sys.executable, "-m", "imagegen.worker.cli", *args]
    result = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def tenant_key(env: dict[str, str], name: str) -> str:
    imagegen(env, "tenant", "create", name)
    return imagegen(env, "tenant", "key", "create", name)


def enqueue_unconsumed(stack: Stack, dead_redis_url: str, prompt: str, **kwargs: Any) -> uuid.UUID:
    """A job whose row is queued and whose message waits on a broker no worker reads."""
    from imagegen.worker.celery_app import create_app
    from imagegen.worker.jobs.enqueue import enqueue

    settings = stack.settings(redis_url=dead_redis_url, imagegen_queued_grace_s=3600)
    return enqueue(prompt, settings=settings, app=create_app(settings), **kwargs)


def make_jobs(stack: Stack, operator_key: str, dead_redis_url: str) -> Jobs:
    """Every job of the suite, each waited for until the worker ended it (but the queued)."""
    jobs = Jobs(operator_key)
    jobs.alpha_key = tenant_key(stack.env, "alpha")
    jobs.beta_key = tenant_key(stack.env, "beta")
    wanted: dict[str, tuple[str, dict[str, Any]]] = {
        "lighthouse": (LIGHTHOUSE, {}),
        "hostile": (HOSTILE, {}),
        "fal_refused": (FAL_REFUSED, {}),
        "prefilter_refused": (PREFILTER_REFUSED, {}),
        "alpha_ok": (ALPHA_OK, {"tenant": "alpha"}),
        "alpha_refused": (ALPHA_REFUSED, {"tenant": "alpha"}),
        "beta_ok": (BETA_OK, {"tenant": "beta"}),
    }
    for role, (prompt, kwargs) in wanted.items():
        jobs.ids[role] = stack.enqueue(prompt, size="1024x768", **kwargs)
        jobs.prompts[role] = prompt
    for role, job_id in jobs.ids.items():
        job = stack.wait_terminal(job_id)
        expected = "refused" if "refused" in role else "succeeded"
        assert job["status"] == expected, (role, job)
        assert expected == "refused" or job["images_stored"], (role, job)
    jobs.ids["queued"] = enqueue_unconsumed(stack, dead_redis_url, QUEUED)
    jobs.prompts["queued"] = QUEUED
    return jobs


def job_status(stack: Stack, job_id: uuid.UUID) -> str:
    """The job's status as Postgres has it."""
    from sqlalchemy import select

    from imagegen.worker.db import get_engine
    from imagegen.worker.jobs import state

    with get_engine(stack.database_url).connect() as db:
        status = db.execute(select(state.JOBS.c.status).where(state.JOBS.c.id == job_id)).scalar()
    return str(getattr(status, "value", status))
