"""Jobs, refusals and spend per tenant: ``imagegen stats --by tenant`` and the query behind
``GET /stats/tenants`` (real Postgres; jobs written as rows)."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest

from imagegen.models import DEFAULT_TENANT_ID, JobStatus, utcnow
from tests.conftest import Stack, add_jobs
from tests.test_cli_comforts import imagegen

#: real Postgres, Redis and subprocesses: the quick run (-m "not slow") leaves these out
pytestmark = pytest.mark.slow


def test_spend_and_refusals_per_tenant(stack: Stack) -> None:
    from imagegen.worker.db import session_scope
    from imagegen.worker.jobs.tenant_stats import tenant_stats
    from imagegen.worker.tenants.keys import create_tenant

    acme = create_tenant(stack.database_url, "acme").id
    money = {"estimated_cost_usd": Decimal("0.2")}
    # acme: two billed successes, one refusal at submit (never at fal: not spend), one whose
    # submit's answer was lost (possibly billed: the estimate counts in the upper bound)
    add_jobs(stack.database_url, 2, JobStatus.SUCCEEDED, tenant_id=acme, fal_request_id="r",
             billed_cost_usd=Decimal("0.15"), billable_units=Decimal("0.15"), **money)  # fmt: skip
    add_jobs(stack.database_url, 1, JobStatus.REFUSED, tenant_id=acme,
             refusal_category="celebrity_likeness", **money)  # fmt: skip
    add_jobs(stack.database_url, 1, JobStatus.FAILED, tenant_id=acme, possibly_billed=True, **money)
    add_jobs(stack.database_url, 1, JobStatus.SUCCEEDED, tenant_id=DEFAULT_TENANT_ID,
             fal_request_id="r", **money)  # fmt: skip
    with session_scope(stack.database_url) as session:
        rows = {r["tenant"]: r for r in tenant_stats(session)}
        assert tenant_stats(session, since=utcnow() + timedelta(hours=1)) == []
        only = tenant_stats(session, tenant_id=acme)
    assert [r["tenant"] for r in only] == ["acme"]
    assert rows["acme"] == {
        "tenant": "acme",
        "jobs": 4,
        "refused": 1,
        "refusals_by_category": {"celebrity_likeness": 1},
        "billed_usd": "0.300000",
        "spend_upper_bound_usd": "0.500000",
        "possibly_billed": 1,
        "cooldowns_started": 0,
        "cooling_down": 0,
    }
    # reached fal, bill not known: only in the upper bound
    assert (rows["default"]["billed_usd"], rows["default"]["spend_upper_bound_usd"]) == (
        "0.000000",
        "0.200000",
    )
    shown = imagegen(stack, "stats", "--by", "tenant")
    assert shown.returncode == 0, shown.stderr
    assert {r["tenant"]: r["billed_usd"] for r in json.loads(shown.stdout)} == {
        "acme": "0.300000",
        "default": "0.000000",
    }
    wrong = imagegen(stack, "stats", "--by", "model")
    assert wrong.returncode == 2 and "--by takes 'tenant'" in wrong.stderr
