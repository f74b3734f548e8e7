"""A tenant's quotas at enqueue (real Postgres and Redis; no worker: jobs stay queued)."""

from __future__ import annotations

import httpx
import pytest

from imagegen.worker.errors import QuotaExceeded
from tests.conftest import API_KEY, Stack, unique
from tests.test_cli_comforts import imagegen

#: real Postgres, Redis and subprocesses: the quick run (-m "not slow") leaves these out
pytestmark = pytest.mark.slow


def _count(stack: Stack) -> int:
    from sqlalchemy import func, select

    from imagegen.models import Job
    from imagegen.worker.db import session_scope

    with session_scope(stack.database_url) as session:
        return int(session.execute(select(func.count()).select_from(Job)).scalar_one())


def _tenant(stack: Stack, **quotas: object) -> str:
    from imagegen.worker.tenants.keys import create_tenant
    from imagegen.worker.tenants.quotas import set_quotas

    create_tenant(stack.database_url, "acme")
    set_quotas(stack.database_url, "acme", dict(quotas))
    return "acme"


def test_max_in_flight_refuses_the_next_job_and_writes_nothing(stack: Stack) -> None:
    tenant = _tenant(stack, max_in_flight=2)
    for _ in range(2):
        stack.enqueue(unique("a fox"), tenant=tenant)
    stack.enqueue(unique("a fox"))  # the default tenant has no quota
    with pytest.raises(QuotaExceeded, match="max_in_flight=2") as caught:
        stack.enqueue(unique("a fox"), tenant=tenant)
    assert caught.value.retry_after_s == 30 and _count(stack) == 3


def test_daily_jobs_and_spend_quotas(stack: Stack) -> None:
    from imagegen.worker.jobs.enqueue import enqueue_many
    from imagegen.worker.tenants.quotas import set_quotas

    # the estimate of a default job is 0.211 USD (high, 1k): two pass 0.5, three do not
    tenant = _tenant(stack, max_spend_per_day_usd="0.5")
    stack.enqueue(unique("a kite"), tenant=tenant)
    with pytest.raises(QuotaExceeded, match="max_spend_per_day_usd") as caught:
        enqueue_many(
            [{"prompt": unique("k"), "tenant": tenant} for _ in range(2)],
            settings=stack.settings(),
            app=stack.app(),
        )
    assert 0 < caught.value.retry_after_s <= 86_401
    assert _count(stack) == 1  # the whole batch refused, nothing written
    set_quotas(stack.database_url, tenant, {"max_spend_per_day_usd": None, "max_jobs_per_day": 1})
    with pytest.raises(QuotaExceeded, match="max_jobs_per_day=1"):
        stack.enqueue(unique("a kite"), tenant=tenant)


def test_the_api_answers_429_with_retry_after_and_the_quota(stack: Stack) -> None:
    from imagegen.worker.tenants.keys import create_key

    tenant = _tenant(stack, max_in_flight=0)
    key = create_key(stack.database_url, tenant).key
    base = stack.start_api()
    answer = httpx.post(
        f"{base}/jobs",
        json={"prompt": unique("a boat")},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 429, answer.text
    assert answer.headers["Retry-After"] == "30"
    assert answer.headers["X-Imagegen-Quota"] == "max_in_flight"
    assert "max_in_flight" in answer.json()["detail"]
    ok = httpx.post(
        f"{base}/jobs",
        json={"prompt": unique("a boat")},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert ok.status_code == 201, ok.text  # the operator's job goes to the default tenant


def test_the_cli_sets_quotas_and_refuses_bad_values(stack: Stack) -> None:
    _tenant(stack)
    done = imagegen(stack, "tenant", "quota", "acme", "--max-in-flight", "0")
    assert done.returncode == 0 and '"max_in_flight": 0' in done.stdout, done.stderr
    over = imagegen(stack, "enqueue", unique("a cat"), "--tenant", "acme")
    assert over.returncode == 2 and "max_in_flight=0" in over.stderr, over.stderr
    assert len(over.stderr.strip().splitlines()) == 1
    bad = imagegen(stack, "tenant", "quota", "acme", "--max-jobs-per-day", "-1")
    assert bad.returncode == 2 and "0 or more" in bad.stderr, bad.stderr
    cleared = imagegen(stack, "tenant", "quota", "acme", "--clear", "max_in_flight")
    assert cleared.returncode == 0 and '"max_in_flight": null' in cleared.stdout
