"""The overview page in Chromium: charts, refusals, spend and counts, scoped to the caller."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import shot
from tests.browser.jobs import Jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _count(page: Page, selector: str) -> int:
    numbers = re.findall(r"\d+", page.locator(selector).inner_text())
    assert numbers, f"no count in {selector}: {page.locator(selector).inner_text()!r}"
    return int(numbers[-1])


def _table(page: Page, table_id: str) -> str:
    return page.locator(f"table#{table_id}").inner_text()


def test_the_operator_sees_every_tenants_figures(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.operator_key)
    with page.expect_navigation():
        page.locator('nav a[href="/ui/overview"]').click()
    assert page.url.endswith("/ui/overview")
    for chart in ("chart-jobs", "chart-refusals"):  # drawn, not an empty frame
        assert page.locator(f"svg#{chart}").is_visible()
        assert page.locator(f"svg#{chart} rect, svg#{chart} path, svg#{chart} circle").count()
    by_category = _table(page, "refusals-by-category")
    for category in ("trademark_ip", "celebrity_likeness", "hate_protected_group"):
        assert category in by_category
    by_source = _table(page, "refusals-by-source")
    assert "prefilter" in by_source and "fal" in by_source
    spend = _table(page, "spend-by-tenant")
    assert "alpha" in spend and "beta" in spend
    assert _count(page, "#queued") >= 1  # the job no worker reads
    assert _count(page, "#in-flight") >= 0
    for part in ("#fal-latency", "#fleet", "table#cooldowns"):
        assert page.locator(part).count() == 1, part
    shot(page, "overview")


def test_a_tenant_sees_its_own_figures_only(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.alpha_key)
    page.goto("/ui/overview")
    by_category = _table(page, "refusals-by-category")
    assert "hate_protected_group" in by_category  # alpha's refusal
    assert "trademark_ip" not in by_category and "celebrity_likeness" not in by_category
    assert "beta" not in _table(page, "spend-by-tenant")
    assert _count(page, "#queued") == 0  # the queued jobs are the operator's
