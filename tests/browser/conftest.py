"""The real stack and one Chromium, started once for tests/browser (package scope).

Postgres (a database cloned from the migrated template), Redis (a leased database), the fal
emulator (HTTPS, started by tests/conftest.py), a Celery worker with the rules pre-filter,
``imagegen poller`` and ``imagegen api`` (uvicorn, ``create_app``) as processes; the jobs of
tests.browser.jobs made by them. Chromium is Debian's (``apt-get install chromium``), never
one Playwright downloads: IMAGEGEN_CHROMIUM or ``chromium`` on PATH. Screenshots go to
IMAGEGEN_ARTIFACTS (default tests/browser/artifacts/, git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.browser.jobs import Jobs, make_jobs
from tests.conftest import API_KEY, FAST_ENV, REDIS_HOST, REDIS_PORT, Stack, fresh_database
from tests.redis_lease import Lease, lease_free_db

ARTIFACTS = Path(os.environ.get("IMAGEGEN_ARTIFACTS") or Path(__file__).parent / "artifacts")


def chromium_path() -> str:
    path = os.environ.get("IMAGEGEN_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("no Chromium: apt-get install -y chromium (or set IMAGEGEN_CHROMIUM)")
    return path


@pytest.fixture(scope="package")
def database(pg_template: str) -> Iterator[str]:
    """A migrated Postgres database for the package."""
    with fresh_database(pg_template) as url:
        yield url


def _lease() -> Lease:
    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0) as locks:
        lease = lease_free_db(locks)
    if lease is None:
        pytest.fail("no free Redis database (15 in use by other test runs)")
    return lease


@pytest.fixture(scope="package")
def redis_pair() -> Iterator[tuple[str, str]]:
    """The broker the worker reads, and one nobody reads (for a job that stays queued)."""
    live, dead = _lease(), _lease()
    try:
        yield live.url, dead.url
    finally:
        live.release()
        dead.release()


@pytest.fixture(scope="package")
def ui_stack(
    database: str, redis_pair: tuple[str, str], emulator: Any, tmp_path_factory: Any
) -> Iterator[tuple[Stack, str]]:
    """A worker (with the rules pre-filter), the poller and ``imagegen api`` (uvicorn,
    ``create_app``) on a free port, started side by side (each waits for its own start)."""
    env = {"DATABASE_URL": database, "REDIS_URL": redis_pair[0], **emulator.env(), **FAST_ENV}
    env["IMAGEGEN_MODERATION"] = "rules"
    stack = Stack(database, redis_pair[0], emulator, env, log_dir=tmp_path_factory.mktemp("ui"))
    try:
        with ThreadPoolExecutor(2) as pool:
            poller, api = pool.submit(stack.start_poller), pool.submit(stack.start_api)
            stack.start_worker(poller=False)
            poller.result()
            base_url = api.result()
        yield stack, base_url
    finally:
        stack.stop()


@pytest.fixture(scope="package")
def jobs(ui_stack: tuple[Stack, str], redis_pair: tuple[str, str]) -> Jobs:
    return make_jobs(ui_stack[0], API_KEY, redis_pair[1])


@pytest.fixture(scope="package")
def live_stack(ui_stack: tuple[Stack, str]) -> Stack:
    """The package's running stack (to enqueue and to read Postgres)."""
    return ui_stack[0]


@pytest.fixture(scope="package")
def base_url(ui_stack: tuple[Stack, str], jobs: Jobs) -> str:
    """The app's URL, once every job is made."""
    return ui_stack[1]


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    for old in ARTIFACTS.glob("failed-*.png"):  # an earlier run's failures
        old.unlink()
    browser = playwright.chromium.launch(executable_path=chromium_path())
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser, base_url: str) -> Iterator[BrowserContext]:
    """A fresh profile per test (no cookies carried over)."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page that fails its test on any uncaught script error; a screenshot if it failed."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        shot(page, f"failed-{request.node.name}", images=False)
    assert not errors, f"script errors in the page: {errors}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


#: true once every image the selector names has loaded and decoded to a real picture
ALL_LOADED = "s => [...document.querySelectorAll(s)].every(i => i.complete && i.naturalWidth)"


def shot(page: Page, name: str, *, images: bool = True) -> Path:
    """A full-page screenshot under the artifacts directory (``images``: once they are in)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if images:
        page.wait_for_function(ALL_LOADED, arg="img")
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Page, key: str) -> None:
    """Through the login form, as a person would; ends on the jobs page."""
    page.goto("/ui/login")
    page.locator("#login-form input[name=key]").fill(key)
    with page.expect_navigation():
        page.locator("#login").click()
    assert page.url.endswith("/ui/jobs"), page.url


@pytest.fixture(scope="package")
def sessions() -> dict[str, list[Any]]:
    """Session cookies by key, each got once through the login form (see ``login``)."""
    return {}


@pytest.fixture
def login(page: Page, sessions: dict[str, list[Any]]) -> Callable[[str], Page]:
    """Log ``page`` in with a key and open the jobs page: through the form the first time
    for each key, then with the session cookie that gave (a login costs ~0.2 s)."""

    def _login(key: str) -> Page:
        if key not in sessions:
            log_in(page, key)
            sessions[key] = page.context.cookies()
            return page
        page.context.add_cookies(sessions[key])
        page.goto("/ui/jobs")
        assert page.url.endswith("/ui/jobs"), page.url  # the cookie still works
        return page

    return _login
