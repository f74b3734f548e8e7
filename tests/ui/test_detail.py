"""GET /ui/jobs/{id} and its cancel form: timeline, refusal, cost, CSRF, tenant scope."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import insert

from imagegen.models import AttemptOutcome, CallbackDelivery, JobAttempt, JobStatus, utcnow
from imagegen.worker.db import get_engine, session_scope
from imagegen.worker.jobs.queries import get_job
from tests.conftest import API_KEY
from tests.ui.conftest import Dash, csrf_of


def _status(dash: Dash, job_id: str) -> str:
    import uuid

    with session_scope(dash.database_url) as db:
        return get_job(session=db, job_id=uuid.UUID(job_id)).status.value


def test_the_page_shows_timeline_refusal_cost_and_callback(dash: Dash) -> None:
    start = utcnow() - timedelta(minutes=5)
    job = dash.job(
        JobStatus.REFUSED,
        refusal_category="celebrity_likeness",
        refusal_source="fal",
        refusal_message="We can't make images of real people.",
        attempts=2,
        estimated_cost_usd=Decimal("0.04"),
        billed_cost_usd=Decimal("0.0123"),
        callback_url="https://app.example/hooks/imagegen?token=s3cret",
        finished_at=start + timedelta(seconds=40),
    )
    attempts = [
        {"number": 1, "outcome": AttemptOutcome.TRANSIENT, "http_status": 429,
         "error_type": "RateLimited", "detail": {"message": "slow down"},
         "started_at": start, "finished_at": start + timedelta(seconds=1)},
        {"number": 2, "outcome": AttemptOutcome.REFUSED, "fal_request_id": "req-2",
         "started_at": start + timedelta(seconds=11), "finished_at": start + timedelta(seconds=40)},
    ]  # fmt: skip
    deliveries = [
        {"attempt": 1, "outcome": "failed", "http_status": 503, "at": start},
        {"attempt": 2, "outcome": "delivered", "http_status": 200, "at": start},
    ]
    with get_engine(dash.database_url).begin() as db:
        for attempt in attempts:
            db.execute(insert(JobAttempt).values(job_id=job, **attempt))
        for delivery in deliveries:
            db.execute(insert(CallbackDelivery).values(job_id=job, **delivery))
    page = dash.client(API_KEY).get(f"/ui/jobs/{job}").text
    events = re.findall(r'<li class="event" data-kind="([a-z_]+)">', page)
    assert events == [
        "created",
        "submitted",
        "transient",
        "submitted",
        "at_fal",
        "refused",
        "ended",
    ]
    assert "HTTP 429" in page and "slow down" in page and "after a wait of 10.0 s" in page
    assert "fal request req-2" in page
    refusal = page[page.index('<section id="refusal">') :]
    assert 'data-category="celebrity_likeness"' in refusal
    assert "We can&#39;t make images of real people." in refusal
    cost = page[page.index('id="cost"') :]
    assert "$0.0400" in cost and "$0.0123" in cost
    callbacks = page[page.index('id="callbacks"') :]
    assert "app.example" in callbacks and "s3cret" not in page  # the host, not its token
    assert re.findall(r'<tr class="delivery" data-outcome="(\w+)">', callbacks) == [
        "failed",
        "delivered",
    ]
    assert "503" in callbacks
    assert 'id="cancel"' not in page  # it has ended


def test_another_tenants_job_or_an_unknown_id_is_a_404_page(dash: Dash) -> None:
    theirs = dash.job(tenant="b")
    client = dash.client(dash.a_key)
    for path in (f"/ui/jobs/{theirs}", "/ui/jobs/00000000-0000-0000-0000-000000000009",
                 "/ui/jobs/not-a-uuid", f"/ui/jobs/{theirs}/thumb/0"):  # fmt: skip
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "text/html" in answer.headers["content-type"]
        assert "<nav>" in answer.text  # still logged in: the page keeps its nav
    assert dash.client(dash.b_key).get(f"/ui/jobs/{theirs}").status_code == 200


def test_cancel_needs_the_sessions_csrf_token(dash: Dash) -> None:
    job = dash.job(JobStatus.QUEUED)
    client = dash.logged_in(API_KEY)
    page = client.get(f"/ui/jobs/{job}").text
    assert f'<form id="cancel" method="post" action="/ui/jobs/{job}/cancel">' in page
    assert '<button id="cancel-button"' in page
    token = csrf_of(page)
    other = dash.logged_in(dash.a_key)  # another session's token is no good here
    other_token = csrf_of(other.get(f"/ui/jobs/{dash.job(JobStatus.QUEUED)}").text)
    for data in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": other_token}):
        answer = client.post(f"/ui/jobs/{job}/cancel", data=data)
        assert answer.status_code == 403, data
        assert _status(dash, job) == "queued"
    answer = client.post(f"/ui/jobs/{job}/cancel", data={"csrf": token})
    assert (answer.status_code, answer.headers["location"]) == (
        303,
        f"/ui/jobs/{job}?notice=cancelled",
    )
    assert _status(dash, job) == "cancelled"
    after = client.get(answer.headers["location"]).text
    assert "Cancelled." in after and 'id="cancel"' not in after


def test_cancel_with_a_bearer_key_and_across_tenants(dash: Dash) -> None:
    theirs = dash.job(JobStatus.QUEUED, tenant="b")
    b = dash.client(dash.b_key)
    token = csrf_of(b.get(f"/ui/jobs/{theirs}").text)
    a = dash.client(dash.a_key)
    assert a.post(f"/ui/jobs/{theirs}/cancel", data={"csrf": token}).status_code == 403
    mine = csrf_of(a.get(f"/ui/jobs/{dash.job(JobStatus.QUEUED)}").text)
    assert a.post(f"/ui/jobs/{theirs}/cancel", data={"csrf": mine}).status_code == 404
    assert _status(dash, theirs) == "queued"
    assert b.post(f"/ui/jobs/{theirs}/cancel", data={"csrf": token}).status_code == 303
    assert _status(dash, theirs) == "cancelled"
