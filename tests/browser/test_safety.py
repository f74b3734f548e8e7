"""What the dashboard must never do, in Chromium: show a tenant another's job, run a prompt
as script, or cancel without the session's CSRF token; and the cancel button that works."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import log_in, shot
from tests.browser.jobs import Jobs, enqueue_unconsumed, job_status
from tests.browser.test_dashboard import listed_ids
from tests.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_a_tenant_sees_only_its_own_jobs(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.alpha_key)
    assert listed_ids(page) == {str(jobs["alpha_ok"]), str(jobs["alpha_refused"])}
    page.goto("/ui/jobs?tenant=beta")  # asking for another tenant's jobs shows none of them
    assert str(jobs["beta_ok"]) not in listed_ids(page)
    for job_id in (jobs["beta_ok"], jobs["lighthouse"]):
        answer = page.goto(f"/ui/jobs/{job_id}")
        assert answer is not None and answer.status == 404, job_id
        assert jobs.prompts["beta_ok"] not in page.content()
        for image in ("thumb", "image"):
            got = page.request.get(f"/ui/jobs/{job_id}/{image}/0")
            assert got.status == 404, (image, job_id, got.status)
    answer = page.goto(f"/ui/jobs/{uuid.uuid4()}")
    assert answer is not None and answer.status == 404
    mine = page.request.get(f"/ui/jobs/{jobs['alpha_ok']}/thumb/0")
    assert mine.status == 200 and mine.headers["content-type"].startswith("image/")


def test_the_operator_sees_the_same_job_the_tenant_may_not(
    login: Callable[[str], Page], jobs: Jobs
) -> None:
    """The 404 above is the tenant's scope, not a broken page."""
    page = login(jobs.operator_key)
    answer = page.goto(f"/ui/jobs/{jobs['beta_ok']}")
    assert answer is not None and answer.status == 200
    assert page.locator("#prompt").inner_text() == jobs.prompts["beta_ok"]


def test_a_hostile_prompt_shows_as_text(login: Callable[[str], Page], jobs: Jobs) -> None:
    page = login(jobs.operator_key)
    hostile = jobs.prompts["hostile"]
    ran = "typeof window.__pwned"  # what the prompt's script and onerror would set
    page.wait_for_load_state("load")
    assert page.evaluate(ran) == "undefined"
    cell = page.locator(f'tr.job[data-job-id="{jobs["hostile"]}"]')
    assert hostile in cell.inner_text()  # the list shows it as written
    page.goto(f"/ui/jobs/{jobs['hostile']}")
    page.wait_for_load_state("load")
    assert page.evaluate(ran) == "undefined"
    prompt = page.locator("#prompt")
    assert prompt.inner_text() == hostile  # and so does its page
    assert prompt.locator("script, img").count() == 0  # not parsed as markup
    shot(page, "job-hostile-prompt")


@pytest.fixture
def queued_job(live_stack: Stack, redis_pair: tuple[str, str], jobs: Jobs) -> uuid.UUID:
    """A fresh job that stays queued (each cancel test ends its own)."""
    return enqueue_unconsumed(live_stack, redis_pair[1], f"a quiet pond #{uuid.uuid4().hex[:6]}")


def test_cancelling_a_queued_job_through_the_button(
    login: Callable[[str], Page], jobs: Jobs, queued_job: uuid.UUID, live_stack: Stack
) -> None:
    page = login(jobs.operator_key)
    page.goto(f"/ui/jobs/{queued_job}")
    assert page.locator("#cancel input[name=csrf]").get_attribute("value")
    with page.expect_navigation():
        page.locator("#cancel-button").click()
    assert urlsplit(page.url).path == f"/ui/jobs/{queued_job}"  # back on the job's page
    assert job_status(live_stack, queued_job) == "cancelled"
    assert page.locator("#cancel").count() == 0  # terminal now: no button
    page.goto("/ui/jobs")
    assert page.locator(f'tr.job[data-job-id="{queued_job}"]').get_attribute("data-status") == (
        "cancelled"
    )


def test_a_cancel_without_the_sessions_token_is_refused(
    login: Callable[[str], Page], jobs: Jobs, queued_job: uuid.UUID, live_stack: Stack
) -> None:
    page = login(jobs.operator_key)  # the session cookie is sent with each request below
    page.goto(f"/ui/jobs/{queued_job}")
    token = page.locator("#cancel input[name=csrf]").get_attribute("value")
    assert token
    url = f"/ui/jobs/{queued_job}/cancel"
    forms: list[dict[str, str | float | bool]] = [{}, {"csrf": "forged"}, {"csrf": token + "x"}]
    for form in forms:
        got = page.request.post(url, form=form, max_redirects=0)
        assert got.status == 403, (form, got.status)
    assert job_status(live_stack, queued_job) == "queued"


def test_a_tenant_cannot_cancel_anothers_job(
    login: Callable[[str], Page], jobs: Jobs, queued_job: uuid.UUID, live_stack: Stack
) -> None:
    page = login(jobs.alpha_key)  # the queued job is the operator's (default tenant)
    answer = page.goto(f"/ui/jobs/{queued_job}")
    assert answer is not None and answer.status == 404
    got = page.request.post(f"/ui/jobs/{queued_job}/cancel", form={"csrf": "x"}, max_redirects=0)
    assert got.status in (403, 404)
    assert job_status(live_stack, queued_job) == "queued"


def test_no_key_or_prompt_reaches_the_apis_log(
    page: Page, jobs: Jobs, live_stack: Stack, base_url: str
) -> None:
    """The pages' process logs each request (path, status), never a key or a prompt: after
    logins with every key (a wrong one too), a search in prompts and a hostile job's page."""
    wrong = "igk_wrong-key-that-must-not-be-logged"
    _submit_login(page, wrong)
    log_in(page, jobs.alpha_key)
    log_in(page, jobs.operator_key)
    page.goto("/ui/jobs?q=lighthouse")
    assert listed_ids(page) == {str(jobs["lighthouse"])}
    page.goto(f"/ui/jobs/{jobs['hostile']}")
    page.context.request.get(f"{base_url}/healthz")  # a last line, so the ones above are out
    log = "".join(p.read_text(errors="replace") for p in live_stack.log_dir.glob("api-*.log"))
    assert f"/ui/jobs/{jobs['hostile']}" in log  # the log is the one written for these pages
    for secret in (jobs.operator_key, jobs.alpha_key, wrong, "lighthouse", *jobs.prompts.values()):
        assert secret not in log, secret


def _submit_login(page: Page, key: str) -> None:
    page.goto("/ui/login")
    page.locator("#login-form input[name=key]").fill(key)
    with page.expect_navigation():
        page.locator("#login").click()
