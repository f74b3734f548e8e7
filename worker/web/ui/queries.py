"""The jobs page's query: the API's listing (newest first, keyset cursor) with more filters.

Only the columns a row shows are read (a prompt's first 300 characters, not 32,000). Each
filter but ``q`` is served by an index on (column, created_at) or by the tenant's; ``q``
(text in the prompt, case-insensitive) walks created_at backwards until a page is full.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, func, select, text, tuple_
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from imagegen.models import Job, JobStatus, Tenant

PAGE = 50
#: a search that matches almost nothing walks the whole table (~0.7 s a million rows): it
#: is stopped after this, and the page asks for a narrower one
SEARCH_TIMEOUT_MS = 3000
PROMPT_SHOWN = 300
SOURCES = ("prefilter", "fal")


class BadFilter(ValueError):
    """A filter value the page cannot use (named in the message)."""


@dataclass(frozen=True)
class Filters:
    status: JobStatus | None = None
    category: str | None = None
    source: str | None = None
    tenant: str | None = None
    model: str | None = None
    q: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: the created_at and id of the previous page's last row
    before: tuple[datetime, uuid.UUID] | None = None
    given: dict[str, str] = field(default_factory=dict)


def parse_filters(raw: dict[str, str]) -> Filters:
    """The query string's filters (empty values: no filter); BadFilter naming a bad one."""
    given = {k: v.strip() for k, v in raw.items() if v and v.strip() and k != "cursor"}
    for name, value in given.items():
        if "\x00" in value or len(value) > 500:
            raise BadFilter(f"{name}: not a usable value")
    status = given.get("status")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise BadFilter(f"status: no status {status!r}")
    source = given.get("source")
    if source is not None and source not in SOURCES:
        raise BadFilter("source: prefilter or fal")
    return Filters(
        status=JobStatus(status) if status else None,
        category=given.get("category"),
        source=source,
        tenant=given.get("tenant"),
        model=given.get("model"),
        q=given.get("q"),
        since=_instant("since", given.get("since"), end_of_day=False),
        until=_instant("until", given.get("until"), end_of_day=True),
        given=given,
    )


def _instant(name: str, value: str | None, *, end_of_day: bool) -> datetime | None:
    """An ISO date or date-time (UTC unless it says); a bare ``until`` date includes that day."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"{name}: not an ISO date (2026-12-01 or 2026-12-01T10:00)") from None
    if end_of_day and len(value) == 10:
        parsed = datetime.combine(parsed.date(), time()) + timedelta(days=1)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_rows(
    session: Session, filters: Filters, tenant_id: uuid.UUID | None, limit: int = PAGE + 1
) -> list[dict[str, Any]]:
    """Up to ``limit`` rows (the page and one more: is there a next page) as dicts."""
    query = (
        select(
            Job.id,
            Job.created_at,
            Job.finished_at,
            Job.status,
            Job.model,
            func.left(Job.prompt, PROMPT_SHOWN).label("prompt"),
            Job.refusal_category,
            Job.refusal_source,
            Job.images,
            Job.images_purged_at,
            Job.error,
            Tenant.name.label("tenant"),
        )
        .join(Tenant, Tenant.id == Job.tenant_id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    for condition in _conditions(session, filters, tenant_id):
        query = query.where(condition)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {SEARCH_TIMEOUT_MS}"))
    return [dict(row._mapping) for row in session.execute(query)]


def timed_out(exc: OperationalError) -> bool:
    """Was this the statement timeout of ``list_rows`` (not a database that is away)?"""
    return getattr(exc.orig, "sqlstate", None) == "57014"  # query_canceled


def _conditions(session: Session, filters: Filters, tenant_id: uuid.UUID | None) -> list[Any]:
    where: list[Any] = []
    if tenant_id is not None:  # a tenant's viewer: its own jobs, whatever it asks for
        where.append(Job.tenant_id == tenant_id)
    elif filters.tenant is not None:
        named = session.execute(select(Tenant.id).where(Tenant.name == filters.tenant))
        where.append(Job.tenant_id == (named.scalar_one_or_none() or uuid.UUID(int=0)))
    if filters.before is not None:
        where.append(tuple_(Job.created_at, Job.id) < tuple_(*filters.before))
    if filters.status is not None:
        where.append(Job.status == filters.status)
    if filters.category is not None:
        where.append(Job.refusal_category == filters.category)
    if filters.source is not None:
        where.append(Job.refusal_source == filters.source)
    if filters.model is not None:
        where.append(Job.model == filters.model)
    if filters.q is not None:
        where.append(Job.prompt.ilike(_like(filters.q), escape="\\"))
    if filters.since is not None:
        where.append(Job.created_at >= filters.since)
    if filters.until is not None:
        where.append(Job.created_at < filters.until)
    return where


def choices(session: Session, tenant_id: uuid.UUID | None) -> dict[str, list[str]]:
    """The filter form's options: tenants (the operator's only) and the refusal categories
    of the viewer's jobs (from the hourly totals on Postgres, not a scan of the table)."""
    from imagegen.models import JobHour

    found: Select[Any]
    if session.get_bind().dialect.name == "postgresql":
        mine = [] if tenant_id is None else [JobHour.tenant_id == tenant_id]
        found = (
            select(JobHour.refusal_category)
            .where(JobHour.key == JobStatus.REFUSED.value, JobHour.refusal_category != "", *mine)
            .group_by(JobHour.refusal_category)
            .having(func.sum(JobHour.n) > 0)
        )
    else:
        found = select(Job.refusal_category).where(Job.refusal_category.is_not(None)).distinct()
        if tenant_id is not None:
            found = found.where(Job.tenant_id == tenant_id)
    tenants: list[str] = []
    if tenant_id is None:
        tenants = list(session.execute(select(Tenant.name)).scalars())
    return {
        "statuses": [s.value for s in JobStatus],
        "categories": sorted(str(c) for c in session.execute(found).scalars()),
        "tenants": sorted(tenants),
        "sources": list(SOURCES),
    }
