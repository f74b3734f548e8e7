"""The dashboard's login: operator and tenant keys, the cookie's flags and lifetime, bearer."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from imagegen.models import JobStatus
from imagegen.worker.tenants import keys
from imagegen.worker.web.ui import session
from tests.conftest import API_KEY
from tests.ui.conftest import Dash, job_ids

PAGES = ("/ui/jobs", "/ui/overview", "/ui/jobs/00000000-0000-0000-0000-000000000001")


def test_the_login_form_follows_the_contract(dash: Dash) -> None:
    form = dash.client().get("/ui/login")
    assert form.status_code == 200
    assert '<form id="login-form" method="post"' in form.text
    assert '<input name="key" type="password"' in form.text
    assert '<button id="login" type="submit">' in form.text
    assert dash.client().get("/ui").headers["location"] == "/ui/jobs"


@pytest.mark.parametrize("page", PAGES)
def test_a_page_without_credentials_sends_to_the_login(dash: Dash, page: str) -> None:
    answer = dash.client().get(page)
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login")


def test_operator_login_sets_a_signed_httponly_strict_cookie_without_the_key(dash: Dash) -> None:
    client = dash.client()
    answer = client.post("/ui/login", data={"key": API_KEY})
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/jobs")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(session.COOKIE + "=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui", f"max-age={12 * 3600}"} <= flags
    assert "secure" not in flags  # plain http here: see the https test
    assert API_KEY not in cookie
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and 'id="jobs"' in page.text
    assert (
        "<nav>" in page.text and 'href="/ui/overview"' in page.text and 'id="logout"' in page.text
    )


def test_the_cookie_is_secure_over_https(dash: Dash) -> None:
    client = dash.client(base_url="https://testserver")
    cookie = client.post("/ui/login", data={"key": API_KEY}).headers["set-cookie"]
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_a_wrong_key_is_the_form_again_with_an_error_and_401(dash: Dash) -> None:
    for wrong in ("nope", "igk_not-a-key", "", API_KEY + "x"):
        answer = dash.client().post("/ui/login", data={"key": wrong})
        assert answer.status_code == 401, wrong
        assert '<p class="error">' in answer.text and 'id="login-form"' in answer.text
        assert "set-cookie" not in answer.headers


def test_a_tenant_login_sees_its_own_jobs_only(dash: Dash) -> None:
    mine, theirs = dash.job(tenant="a"), dash.job(tenant="b")
    client = dash.logged_in(dash.a_key)
    assert dash.a_key not in client.cookies.get(session.COOKIE, "")
    assert job_ids(client.get("/ui/jobs").text) == [mine]
    assert job_ids(client.get("/ui/jobs?tenant=tenant-b").text) == [mine]  # not its to choose
    assert client.get(f"/ui/jobs/{theirs}").status_code == 404
    operator = dash.logged_in(API_KEY)
    assert set(job_ids(operator.get("/ui/jobs").text)) == {mine, theirs}


def test_a_forged_expired_or_revoked_session_is_no_session(dash: Dash) -> None:
    forged = dash.client(cookies={session.COOKIE: session.issue(dash.settings, "op") + "x"})
    assert forged.get("/ui/jobs").status_code == 303
    other_secret = dash.settings.model_copy(update={"api_key": None, "ui_secret": None})
    foreign = session.issue(other_secret, "op:whatever")
    assert dash.client(cookies={session.COOKIE: foreign}).get("/ui/jobs").status_code == 303
    old = session.issue(dash.settings, str(dash.a_key_id), now=time.time() - 12 * 3600 - 5)
    assert dash.client(cookies={session.COOKIE: old}).get("/ui/jobs").status_code == 303
    fresh = session.issue(dash.settings, str(dash.a_key_id))
    assert dash.client(cookies={session.COOKIE: fresh}).get("/ui/jobs").status_code == 200
    client = dash.logged_in(dash.a_key)
    assert client.get("/ui/jobs").status_code == 200
    keys.revoke_key(dash.database_url, dash.a_key_id)
    assert client.get("/ui/jobs").status_code == 303


def test_logout_clears_the_cookie(dash: Dash) -> None:
    client = dash.logged_in(API_KEY)
    answer = client.post("/ui/logout")
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login")
    assert session.COOKIE not in client.cookies
    assert client.get("/ui/jobs").status_code == 303


def test_pages_take_a_bearer_key_and_a_wrong_one_is_401(dash: Dash) -> None:
    job = dash.job(tenant="b")
    for key in (API_KEY, dash.b_key):
        for page in ("/ui/jobs", "/ui/overview", f"/ui/jobs/{job}"):
            answer = dash.client(key).get(page)
            assert answer.status_code == 200, (page, answer.text[:300])
    assert dash.client("wrong").get("/ui/jobs").status_code == 401
    assert dash.client(dash.a_key).get(f"/ui/jobs/{job}").status_code == 404


def test_the_access_log_has_no_key_and_no_query_string(
    dash: Dash, monkeypatch: pytest.MonkeyPatch, restore_structlog: None
) -> None:
    import structlog

    from imagegen.worker.logs import get_logger
    from imagegen.worker.web import access

    dash.job(JobStatus.REFUSED, prompt="a secret prompt", refusal_category="trademark_ip")
    client = dash.logged_in(API_KEY)
    # an earlier test may have configured structlog (its level filter drops info lines) and
    # cached the module's logger: defaults, and a fresh logger, for this one
    structlog.reset_defaults()
    monkeypatch.setattr(access, "log", get_logger("imagegen.access"))
    with capture_logs() as logs:
        client.get("/ui/jobs?q=secret+prompt&category=trademark_ip")
        client.post("/ui/login", data={"key": API_KEY})
    text = repr(logs)
    assert "/ui/jobs" in text and "/ui/login" in text
    assert "secret" not in text and "trademark" not in text and API_KEY not in text
