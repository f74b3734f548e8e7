"""The benchmark harness's guard: a benchmark flushes its Redis database, so it runs only on
one it leased (tests.redis_lease), like the tests, and another run asking for it refuses."""

from __future__ import annotations

import pytest
import redis

from bench.host import one_run_at_a_time


def _holder(url: str) -> bytes | None:
    db = url.rsplit("/", 1)[1]
    with redis.Redis(host="127.0.0.1", port=6379, db=0) as locks:
        value: bytes | None = locks.get(f"imagegen-test-db:{db}")
        return value


def test_a_benchmark_leases_its_redis_db_and_a_second_on_it_refuses(redis_url: str) -> None:
    refused = pytest.raises(SystemExit, match="another run is using " + redis_url)
    with refused, one_run_at_a_time(redis_url, "second"):
        pass  # this test holds it, like a test run would

    with one_run_at_a_time(None, "first") as url:
        assert url != redis_url
        held = _holder(url)
        assert held is not None
        again = pytest.raises(SystemExit, match="another run is using " + url)
        with again, one_run_at_a_time(url, "second"):
            pass
        redis.Redis.from_url(url).set("left-by-the-benchmark", 1)
    assert _holder(url) != held  # released when the run ended
    assert redis.Redis.from_url(url).get("left-by-the-benchmark") is None  # and flushed


def test_a_benchmark_refuses_a_database_outside_the_leased_ones() -> None:
    refused = pytest.raises(SystemExit, match="must be a database 1-15")
    with refused, one_run_at_a_time("redis://127.0.0.1:6379/0", "bench"):
        pass
