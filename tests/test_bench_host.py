"""The benchmark harness's guard: two benchmarks on one Redis database would flush each
other's queue, so the second refuses to start."""

from __future__ import annotations

import pytest

from bench.host import one_run_at_a_time

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def test_a_second_benchmark_on_the_same_redis_db_refuses_to_start() -> None:
    url = "redis://127.0.0.1:6379/11"
    with one_run_at_a_time(ADMIN_URL, url, "first"):
        refused = pytest.raises(SystemExit, match="another benchmark is running on " + url)
        with refused, one_run_at_a_time(ADMIN_URL, url, "second"):
            pass
        with one_run_at_a_time(ADMIN_URL, "redis://127.0.0.1:6379/10", "other db"):
            pass  # another Redis database: no conflict
    with one_run_at_a_time(ADMIN_URL, url, "after"):
        pass  # released when the first run ended
