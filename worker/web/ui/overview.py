"""GET /ui/overview: jobs and refusals over time (SVG), refusals by category and source,
spend by tenant, time at fal, what is queued and in flight, the fleet, the cool-downs.

A tenant's viewer gets the same page over its own jobs; the fleet's slots in use (every
tenant's requests) are the operator's only.
"""

from __future__ import annotations

from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from imagegen.worker.db import session_scope
from imagegen.worker.fal.limits import FalLimiter
from imagegen.worker.settings import Settings
from imagegen.worker.tenants.cooldown import list_active

from . import figures, svg
from .guard import Viewer, settings_of, ui_caller
from .render import page

router = APIRouter(prefix="/ui", include_in_schema=False)
#: the jobs chart's series, bottom to top (the open states counted together)
_OUTCOMES = ("succeeded", "refused", "failed", "cancelled")


@router.get("/overview")
def overview_page(request: Request, viewer: Annotated[Viewer, Depends(ui_caller)]) -> Response:
    return render_overview(request, viewer)


def render_overview(request: Request, viewer: Viewer) -> Response:
    settings = settings_of(request)
    window = figures.WINDOWS.get(request.query_params.get("range", ""), figures.WINDOWS["24h"])
    now = figures.now()
    since = window.starts(now)[0]
    tenant_id = viewer.caller.tenant_id
    with session_scope(settings.database_url) as db:
        jobs = figures.jobs_by_bucket(db, since, window.bucket, tenant_id)
        refusals = figures.refusals_by_bucket(db, since, window.bucket, tenant_id)
        spend = figures.spend(db, since, tenant_id)
        counts = figures.open_counts(db, tenant_id)
        latency = figures.fal_latency(db, tenant_id)
    cooldowns = [
        c
        for c in list_active(settings.database_url)
        if tenant_id is None or c["tenant"] == viewer.caller.tenant_name
    ]
    return page(
        request,
        "overview.html",
        viewer,
        window=window,
        windows=list(figures.WINDOWS),
        since=since,
        **_charts(window, now, jobs, refusals),
        **_refusal_tables(refusals),
        spend=spend,
        counts=counts,
        latency=latency,
        fleet=fleet_state(settings, operator=viewer.caller.operator),
        cooldowns=cooldowns,
    )


def _label(key: str, bucket: str) -> str:
    return key[11:13] + ":00" if bucket == "hour" else key[5:10]


def _charts(
    window: figures.Window,
    now: Any,
    jobs: dict[tuple[str, str], int],
    refusals: list[tuple[str, str, str, int]],
) -> dict[str, Any]:
    keys = [start.strftime("%Y-%m-%d %H") for start in window.starts(now)]
    labels = [_label(key, window.bucket) for key in keys]
    job_series = [svg.Series(s, [jobs.get((k, s), 0) for k in keys]) for s in _OUTCOMES]
    job_series.append(svg.Series("open", [jobs.get((k, "open"), 0) for k in keys]))
    by_cell: dict[tuple[str, str], int] = {}
    for key, category, _source, n in refusals:
        by_cell[(key, category)] = by_cell.get((key, category), 0) + n
    categories = sorted({category for _, category, _, _ in refusals})
    refusal_series = [svg.Series(c, [by_cell.get((k, c), 0) for k in keys]) for c in categories]
    unit = "hour" if window.bucket == "hour" else "day"
    return {
        "chart_jobs": svg.bars("chart-jobs", labels, job_series, f"Jobs created per {unit}"),
        "legend_jobs": svg.legend(job_series),
        "chart_refusals": svg.bars(
            "chart-refusals", labels, refusal_series, f"Refusals per {unit} by category"
        ),
        "legend_refusals": svg.legend(refusal_series),
        "jobs_total": sum(jobs.values()),
    }


def _refusal_tables(refusals: list[tuple[str, str, str, int]]) -> dict[str, Any]:
    by_category: dict[str, int] = {}
    by_source: dict[tuple[str, str], int] = {}
    for _key, category, source, n in refusals:
        by_category[category] = by_category.get(category, 0) + n
        by_source[(source, category)] = by_source.get((source, category), 0) + n
    return {
        "by_category": sorted(by_category.items(), key=lambda kv: (-kv[1], kv[0])),
        "by_source": sorted(by_source.items()),
        "refusals_total": sum(by_category.values()),
    }


def fleet_state(settings: Settings, *, operator: bool) -> dict[str, Any]:
    """The fleet cap, the slots held (operator only) and fal's 429 cool-down, from Redis."""
    state: dict[str, Any] = {"cap": settings.fal_concurrency, "error": None, "held": None}
    limiter = FalLimiter.for_settings(settings)
    try:
        state["cooldown_s"] = limiter.cooldown_remaining_s()
        if operator:
            state["held"] = limiter.in_flight()
    except (redis.RedisError, OSError) as exc:
        state.update(cooldown_s=None, error=f"Redis does not answer ({type(exc).__name__})")
    return state
