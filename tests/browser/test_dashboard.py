"""Logging in, the jobs list, its filters and a job's page, in Chromium (UI-CONTRACT.md)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page

from tests.browser.conftest import log_in, shot
from tests.browser.jobs import Jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: true once the image has loaded (its size known: a header is enough for that)
LOADED = "img => img.complete && img.naturalWidth > 0"
#: the alpha of the image's middle pixel, drawn on a canvas: 0 when only its header decoded
MIDDLE_ALPHA = """async img => {
    await img.decode();
    const canvas = document.createElement("canvas");
    [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data[3];
}"""


def assert_shown(page: Page, img: Locator) -> None:
    """The image loaded and decoded into pixels, as a person would see it."""
    handle = img.element_handle()
    page.wait_for_function(LOADED, arg=handle)
    assert page.evaluate(MIDDLE_ALPHA, handle) == 255


def listed_ids(page: Page) -> set[str]:
    return set(page.locator("#jobs tr.job").evaluate_all("rows => rows.map(r => r.dataset.jobId)"))


def test_logging_in_through_the_form_lists_every_job(page: Page, jobs: Jobs) -> None:
    page.goto("/ui/jobs")  # no cookie: sent to the login form
    assert page.url.endswith("/ui/login"), page.url
    shot(page, "login")
    log_in(page, jobs.operator_key)
    assert listed_ids(page) >= {str(i) for i in jobs.ids.values()}  # every tenant's
    cookie = next(c for c in page.context.cookies() if c["name"] == "imagegen_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert jobs.operator_key not in cookie["value"]
    shot(page, "jobs")


def test_a_wrong_key_shows_an_error_and_sets_no_cookie(page: Page, jobs: Jobs) -> None:
    page.goto("/ui/login")
    page.locator("#login-form input[name=key]").fill("igk_not-a-key-at-all")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.locator("#login").click()
    assert answer.value.status == 401
    error = page.locator("p.error")
    assert error.is_visible() and error.inner_text().strip()
    assert page.locator("#login-form").is_visible()  # the form again, to try once more
    assert not [c for c in page.context.cookies() if c["name"] == "imagegen_ui"]
    page.goto("/ui/jobs")
    assert page.url.endswith("/ui/login")


def test_the_thumbnail_loads_in_the_list(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.operator_key)
    thumb = page.locator(f'tr.job[data-job-id="{jobs["lighthouse"]}"] img.thumb')
    assert thumb.get_attribute("src") == f"/ui/jobs/{jobs['lighthouse']}/thumb/0"
    assert_shown(page, thumb)
    queued = page.locator(f'tr.job[data-job-id="{jobs["queued"]}"]')
    assert queued.get_attribute("data-status") == "queued"
    assert queued.locator("img.thumb").count() == 0


def _filter(page: Page, name: str, value: str) -> None:
    """Set one field of the filter form (a select or an input) and apply it."""
    field = page.locator(f"#filters [name={name}]")
    if field.evaluate("el => el.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)
    with page.expect_navigation():
        page.locator("#apply").click()


def test_filtering_by_refusal_category(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.operator_key)
    _filter(page, "category", "trademark_ip")
    assert "category=trademark_ip" in page.url
    assert listed_ids(page) == {str(jobs["fal_refused"])}
    badge = page.locator(f'tr.job[data-job-id="{jobs["fal_refused"]}"] .badge.refusal')
    assert badge.get_attribute("data-category") == "trademark_ip"
    _filter(page, "category", "celebrity_likeness")  # the pre-filter's refusal
    assert listed_ids(page) == {str(jobs["prefilter_refused"])}


def test_filtering_by_status_and_source(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.operator_key)
    _filter(page, "status", "refused")
    refused = {str(jobs[r]) for r in ("fal_refused", "prefilter_refused", "alpha_refused")}
    assert listed_ids(page) == refused
    assert page.locator("#jobs .badge.refusal").count() == 3
    _filter(page, "source", "prefilter")
    assert listed_ids(page) == {str(jobs["prefilter_refused"])}


def test_filtering_by_tenant_and_prompt_text(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.operator_key)
    _filter(page, "tenant", "beta")
    assert listed_ids(page) == {str(jobs["beta_ok"])}
    page.goto("/ui")  # the dashboard's root is the jobs list
    assert urlsplit(page.url).path == "/ui/jobs"
    _filter(page, "q", "lighthouse")
    assert listed_ids(page) == {str(jobs["lighthouse"])}


def test_a_jobs_page_shows_prompt_timeline_and_full_image(
    login: Callable[[str], Page], jobs: Jobs
) -> None:
    page = login(jobs.operator_key)
    with page.expect_navigation():
        page.locator(f'tr.job[data-job-id="{jobs["lighthouse"]}"] a.job-link').first.click()
    assert page.url.endswith(f"/ui/jobs/{jobs['lighthouse']}")
    assert page.locator("#prompt").inner_text() == jobs.prompts["lighthouse"]
    assert page.locator("#timeline li.event").count() >= 1
    full = page.locator("img.full")
    assert full.count() == 1
    assert_shown(page, full)
    assert page.locator("#cost").is_visible()
    assert page.locator("#cancel").count() == 0  # succeeded: nothing to cancel
    shot(page, "job-detail")


def test_a_refused_jobs_page_says_why(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.operator_key)
    page.goto(f"/ui/jobs/{jobs['fal_refused']}")
    refusal = page.locator("#refusal").inner_text()
    assert "trademark_ip" in refusal
    assert "trademarked characters or brands" in refusal  # the message the user saw
    assert page.locator("img.full").count() == 0
    shot(page, "job-refused")


def test_the_bearer_header_works_without_a_login(
    browser: Browser, base_url: str, jobs: Jobs
) -> None:
    context = browser.new_context(
        base_url=base_url, extra_http_headers={"Authorization": f"Bearer {jobs.alpha_key}"}
    )
    try:
        page = context.new_page()
        answer = page.goto("/ui/jobs")
        assert answer is not None and answer.status == 200 and page.url.endswith("/ui/jobs")
        assert listed_ids(page) == {str(jobs["alpha_ok"]), str(jobs["alpha_refused"])}
    finally:
        context.close()


def test_logging_out_ends_the_session(page: Page, jobs: Jobs) -> None:
    log_in(page, jobs.operator_key)  # a session of its own: the others' is not ended
    nav = page.locator("nav")
    assert (
        nav.locator('a[href="/ui/jobs"]').count() and nav.locator('a[href="/ui/overview"]').count()
    )
    with page.expect_navigation():
        nav.locator("button").click()
    assert page.url.endswith("/ui/login")
    page.goto(f"/ui/jobs/{jobs['lighthouse']}")
    assert page.url.endswith("/ui/login")
