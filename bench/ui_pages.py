"""The dashboard's pages timed server-side on a filled table (``bench.table_scale``).

Each page is requested through the real app in-process (Starlette's TestClient, operator
key as a bearer header: no network, no browser), warm, and the median of several runs
kept. The time is the app's: routing, the queries, the template.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

API_KEY = "bench-ui-key"
#: label -> the page's path and query (what an operator clicks first, then filters)
PAGES = {
    "ui_jobs_ms": "/ui/jobs",
    "ui_jobs_refused_category_ms": "/ui/jobs?status=refused&category=celebrity_likeness",
    "ui_jobs_tenant_ms": "/ui/jobs?tenant=bench-b",
    "ui_jobs_q_ms": "/ui/jobs?q=prompt+99",
    "ui_jobs_page_2_ms": "",  # the next link of /ui/jobs, filled in below
    "ui_overview_ms": "/ui/overview",
    "ui_overview_7d_ms": "/ui/overview?range=7d",
}


def _median_ms(client: Any, path: str, repeat: int) -> float:
    answer = client.get(path)  # warm: connections, template compile, caches
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    took = []
    for _ in range(repeat):
        start = time.perf_counter()
        answer = client.get(path)
        took.append(time.perf_counter() - start)
        assert answer.status_code == 200, (path, answer.status_code)
    return statistics.median(took) * 1000


def time_pages(url: str, repeat: int = 7, **env: str) -> dict[str, float]:
    """``env``: more settings by environment name (a test's REDIS_URL)."""
    import logging
    import re

    import structlog

    # the access log's line per request (info) would bury the figures; warnings still show
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    from fastapi.testclient import TestClient

    from imagegen.worker.settings import Settings
    from imagegen.worker.web.app import create_app

    settings = Settings(DATABASE_URL=url, IMAGEGEN_API_KEY=API_KEY, **env)  # type: ignore[call-arg]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    figures: dict[str, float] = {}
    with TestClient(create_app(settings), headers=headers) as client:
        first = client.get("/ui/jobs").text
        found = re.search(r'id="next" href="([^"]+)"', first)
        pages = dict(PAGES)
        if found is not None:
            pages["ui_jobs_page_2_ms"] = found.group(1).replace("&amp;", "&")
        else:  # a table of one page
            del pages["ui_jobs_page_2_ms"]
        for label, path in pages.items():
            figures[label] = _median_ms(client, path, repeat)
    return figures
