"""GET /ui/overview: charts, tables and live counts, a tenant's own figures only; the hourly
totals of migration 0015 equal a live count of the table after inserts, moves and deletes."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete, update

from imagegen.models import Cooldown, Job, JobStatus, utcnow
from imagegen.worker.db import get_engine, session_scope
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.jobs.tenant_stats import tenant_stats
from imagegen.worker.web.ui import figures, rollup, svg
from tests.conftest import API_KEY
from tests.ui.conftest import Dash


def _bars(page: str, chart: str) -> dict[str, int]:
    """Each series' total in one chart."""
    body = page[page.index(f'<svg id="{chart}"') :]
    body = body[: body.index("</svg>")]
    totals: dict[str, int] = {}
    for series, value in re.findall(r'data-series="([^"]+)" data-value="(\d+)"', body):
        totals[series] = totals.get(series, 0) + int(value)
    return totals


def _table(page: str, table: str) -> list[list[str]]:
    body = page[page.index(f'<table id="{table}"') :]
    body = body[body.index("<tbody>") : body.index("</tbody>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]


def _fill(dash: Dash) -> None:
    now = utcnow()
    for n in range(3):
        dash.job(
            JobStatus.SUCCEEDED, created_at=now - timedelta(hours=n), billed_cost_usd=Decimal("0.5")
        )
    dash.job(JobStatus.REFUSED, refusal_category="trademark_ip", refusal_source="prefilter")
    dash.job(JobStatus.REFUSED, refusal_category="celebrity_likeness", refusal_source="fal")
    dash.job(JobStatus.QUEUED)
    dash.job(JobStatus.AT_FAL, fal_request_id="r1", estimated_cost_usd=Decimal("0.25"))
    dash.job(
        JobStatus.REFUSED, tenant="b", refusal_category="celebrity_likeness", refusal_source="fal"
    )
    dash.job(JobStatus.SUCCEEDED, tenant="b", created_at=now - timedelta(days=3))  # not in 24 h


def test_the_operator_sees_every_tenants_figures(dash: Dash) -> None:
    _fill(dash)
    page = dash.client(API_KEY).get("/ui/overview").text
    assert _bars(page, "chart-jobs") == {"succeeded": 3, "refused": 3, "open": 2}
    assert _bars(page, "chart-refusals") == {"celebrity_likeness": 2, "trademark_ip": 1}
    assert _table(page, "refusals-by-category") == [
        ["celebrity_likeness", "2"],
        ["trademark_ip", "1"],
    ]
    assert _table(page, "refusals-by-source") == [
        ["fal", "celebrity_likeness", "2"],
        ["prefilter", "trademark_ip", "1"],
    ]
    spend = _table(page, "spend-by-tenant")
    assert spend == [
        ["tenant-a", "7", "2", "1.500000", "1.750000", "0"],
        ["tenant-b", "1", "1", "0.000000", "0.000000", "0"],
    ]
    assert re.search(r'id="queued">1<', page) and re.search(r'id="in-flight">1<', page)
    assert 'id="fleet"' in page and 'id="fal-latency"' in page and 'id="cooldowns"' in page
    week = dash.client(API_KEY).get("/ui/overview?range=7d").text
    assert _bars(week, "chart-jobs")["succeeded"] == 4  # the one of 3 days ago


def test_a_tenant_sees_its_own_figures_only(dash: Dash) -> None:
    _fill(dash)
    with session_scope(dash.database_url) as db:
        db.add(
            Cooldown(
                tenant_id=dash.tenants["b"],
                end_user="u-<b>",
                refusals=5,
                until=utcnow() + timedelta(minutes=9),
            )
        )
    page = dash.client(dash.b_key).get("/ui/overview").text
    assert _bars(page, "chart-jobs") == {"refused": 1}
    assert [row[0] for row in _table(page, "spend-by-tenant")] == ["tenant-b"]
    assert _table(page, "cooldowns")[0][:3] == ["tenant-b", "u-&lt;b&gt;", "5"]
    assert 'id="fleet-held"' not in page  # the fleet's slots are every tenant's: operator only
    other = dash.client(dash.a_key).get("/ui/overview").text
    assert "tenant-b" not in other and "None." in other


def test_the_fleet_cool_down_comes_from_redis(dash: Dash, redis_url: str) -> None:
    dash.settings = dash.settings.model_copy(update={"redis_url": redis_url, "fal_concurrency": 4})
    FalLimiter.for_settings(dash.settings).cool_down(30)
    fleet = dash.client(API_KEY).get("/ui/overview").text
    fleet = fleet[fleet.index('<section id="fleet">') :]
    assert re.search(r'id="fleet-cap">4<', fleet) and re.search(r'id="fleet-held">0<', fleet)
    assert re.search(r'id="fleet-cooldown" class="cooling">(29|30) s left', fleet)


def test_svg_text_is_escaped() -> None:
    chart = svg.bars("c", ["<b>"], [svg.Series("<script>x</script>", [3])], "t & <t>")
    assert "<script>" not in chart and "&lt;script&gt;" in chart and "<b>" not in chart
    assert 'data-value="3"' in chart


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_the_hourly_totals_equal_a_live_count(dash: Dash, bucket: str) -> None:
    _fill(dash)
    since = utcnow() - timedelta(days=7)
    with get_engine(dash.database_url).begin() as db:  # moves, a correction, a cost, a delete
        db.execute(
            update(Job).where(Job.status == JobStatus.QUEUED).values(status=JobStatus.CANCELLED)
        )
        db.execute(
            update(Job).where(Job.refusal_category == "trademark_ip").values(refusal_category="x")
        )
        db.execute(
            update(Job).where(Job.status == JobStatus.AT_FAL).values(billed_cost_usd=Decimal("0.1"))
        )
        db.execute(
            delete(Job).where(Job.tenant_id == dash.tenants["b"], Job.status == JobStatus.REFUSED)
        )
    for tenant in (None, dash.tenants["a"], uuid.uuid4()):
        with session_scope(dash.database_url) as db:
            kept_jobs = rollup.jobs_by_bucket(db, since, bucket, tenant)
            kept_refusals = sorted(rollup.refusals_by_bucket(db, since, bucket, tenant))
            kept_spend = rollup.spend(db, since, tenant)
            live_spend = tenant_stats(db, since=since, tenant_id=tenant)
            live_jobs = figures.live_jobs_by_bucket(db, since, bucket, tenant)
            live_refusals = sorted(figures.live_refusals_by_bucket(db, since, bucket, tenant))
        assert kept_jobs == live_jobs
        assert kept_refusals == live_refusals
        shown = ("tenant", "jobs", "refused", "billed_usd", "spend_upper_bound_usd")
        assert kept_spend == [
            {k: line[k] for k in (*shown, "possibly_billed")} for line in live_spend
        ]


def test_the_benchmark_times_every_page(dash: Dash, restore_structlog: None) -> None:
    from bench.ui_pages import PAGES, time_pages

    _fill(dash)
    figures = time_pages(dash.database_url, repeat=1, REDIS_URL=dash.settings.redis_url)
    assert set(figures) == set(PAGES) - {"ui_jobs_page_2_ms"}  # one page of jobs: no next
    assert all(ms > 0 for ms in figures.values())
