"""GET /ui/jobs: filters, newest first, the cursor, thumbnails and badges, escaping."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import markupsafe

from imagegen.models import JobStatus, utcnow
from tests.conftest import API_KEY, add_jobs
from tests.ui.conftest import Dash, job_ids

HOSTILE = '<script>alert(1)</script> & "quotes" <img src=x onerror=alert(2)>'


def test_the_filters_each_narrow_the_list(dash: Dash) -> None:
    now = utcnow()
    queued = dash.job(created_at=now - timedelta(minutes=1))
    fal = dash.job(
        JobStatus.REFUSED,
        refusal_category="celebrity_likeness",
        refusal_source="fal",
        created_at=now - timedelta(minutes=2),
    )
    pre = dash.job(
        JobStatus.REFUSED,
        refusal_category="trademark_ip",
        refusal_source="prefilter",
        prompt="a Mickey Mouse poster",
        created_at=now - timedelta(minutes=3),
    )
    other_model = dash.job(
        JobStatus.FAILED, model="openai/gpt-image-1", created_at=now - timedelta(days=3)
    )
    theirs = dash.job(tenant="b", created_at=now - timedelta(minutes=4))
    client = dash.client(API_KEY)
    expected = {
        "": [queued, fal, pre, theirs, other_model],
        "status=refused": [fal, pre],
        "category=trademark_ip": [pre],
        "source=prefilter": [pre],
        "source=fal": [fal],
        "tenant=tenant-b": [theirs],
        "tenant=nobody": [],
        "model=openai/gpt-image-1": [other_model],
        "q=mickey+MOUSE": [pre],  # case-insensitive
        "q=%25": [],  # a % is a character, not a wildcard
        f"since={(now - timedelta(days=1)).date().isoformat()}": [queued, fal, pre, theirs],
        f"until={(now - timedelta(days=2)).date().isoformat()}": [other_model],
        "status=refused&source=fal&tenant=tenant-a": [fal],
        "status=&category=&q=": [queued, fal, pre, theirs, other_model],  # empty: no filter
    }
    for query, ids in expected.items():
        answer = client.get(f"/ui/jobs?{query}")
        assert answer.status_code == 200, (query, answer.text[:300])
        assert job_ids(answer.text) == ids, query


def test_the_filter_form_and_rows_follow_the_contract(dash: Dash) -> None:
    refused = dash.job(
        JobStatus.REFUSED, refusal_category="celebrity_likeness", refusal_source="fal"
    )
    page = dash.client(API_KEY).get("/ui/jobs?status=refused").text
    assert '<form id="filters" method="get"' in page and '<button id="apply"' in page
    for name in ("status", "category", "source", "tenant", "model", "q", "since", "until"):
        assert f'name="{name}"' in page, name
    assert '<option value="refused" selected>' in page
    assert f'<tr class="job" data-job-id="{refused}" data-status="refused">' in page
    assert '<span class="badge refusal" data-category="celebrity_likeness"' in page
    assert f'<a class="job-link" href="/ui/jobs/{refused}">' in page
    assert 'id="next"' not in page  # one page only


def test_a_tenant_has_no_tenant_filter(dash: Dash) -> None:
    page = dash.client(dash.a_key).get("/ui/jobs").text
    assert 'name="tenant"' not in page and "tenant-b" not in page


def test_pages_follow_the_cursor_newest_first_without_gaps_or_repeats(dash: Dash) -> None:
    now, made = utcnow(), []
    for n in range(120):  # two jobs per instant: the id breaks the tie
        created = now - timedelta(seconds=n // 2)
        tenant = dash.tenants["a"]
        (job,) = add_jobs(
            dash.database_url, 1, JobStatus.SUCCEEDED, created_at=created, tenant_id=tenant
        )
        made.append((created, job))
    newest_first = [str(job) for _, job in sorted(made, reverse=True)]
    client = dash.client(API_KEY)
    seen, href, pages = [], "/ui/jobs?status=succeeded", 0
    while href:
        page = client.get(href).text
        seen += job_ids(page)
        pages += 1
        found = re.search(r'<a id="next" href="([^"]+)"', page)
        href = html.unescape(found.group(1)) if found else ""
        if href:
            assert "status=succeeded" in href and "cursor=" in href  # the filters are kept
    assert pages == 3
    assert seen == newest_first


def test_a_bad_filter_or_cursor_is_a_422_page(dash: Dash) -> None:
    client = dash.client(API_KEY)
    for query in ("status=running", "source=moderation", "since=yesterday", "cursor=zzz"):
        answer = client.get(f"/ui/jobs?{query}")
        assert answer.status_code == 422, query
        assert '<p class="error">' in answer.text


def test_a_hostile_prompt_and_category_render_as_text(dash: Dash) -> None:
    job = dash.job(JobStatus.REFUSED, prompt=HOSTILE, refusal_category='x"><script>alert(3)')
    client = dash.client(API_KEY)
    for page in (client.get("/ui/jobs").text, client.get(f"/ui/jobs/{job}").text):
        assert "<script>" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    shown = f'<pre id="prompt">{markupsafe.escape(HOSTILE)}</pre>'
    assert shown in client.get(f"/ui/jobs/{job}").text
    assert html.unescape(shown) == f'<pre id="prompt">{HOSTILE}</pre>'  # the whole prompt


def test_the_category_options_are_the_viewers_own(dash: Dash) -> None:
    dash.job(JobStatus.REFUSED, refusal_category="trademark_ip", refusal_source="fal")
    dash.job(JobStatus.REFUSED, tenant="b", refusal_category="self_harm", refusal_source="fal")
    mine = dash.client(dash.a_key).get("/ui/jobs").text
    assert '<option value="trademark_ip">' in mine and "self_harm" not in mine
    every = dash.client(API_KEY).get("/ui/jobs").text
    assert '<option value="trademark_ip">' in every and '<option value="self_harm">' in every
