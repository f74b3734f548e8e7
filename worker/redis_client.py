"""One bounded Redis connection pool per process for imagegen's own keys.

redis-py 8 raises MaxConnectionsError past a pool's limit; a blocking pool makes hundreds
of worker threads wait for a connection instead.

Redis going away (a restart, a failover) under a running worker (``patient``): each command is tried
again with backoff (about 10 s, up to 20 s), one warning line per retry, before its error
reaches the stage (the job is left to its lease, and the poller or the sweeper).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from imagegen.worker.logs import get_logger

T = TypeVar("T")
log = get_logger(__name__)

#: connection errors worth waiting out (redis-py's own defaults for a Retry)
UNAVAILABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


class LoggedRetry(Retry):
    """redis-py's retry with backoff, logging one line (no traceback) per retry."""

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def failed(error: Exception, failures: int) -> None:
            if with_failure_count:
                fail(error, failures)
            else:
                fail(error)
            retries = self.get_retries()
            if retries < 0 or failures <= retries:
                log.warning("redis.retry", attempt=failures, error=str(error) or repr(error))

        return super().call_with_retry(do, failed, is_retryable, with_failure_count=True)


def _retry() -> LoggedRetry:
    # 8 retries, jittered backoff 0.25 s doubling up to 4 s (redis-py's default: 3, up to 10 s)
    return LoggedRetry(ExponentialWithJitterBackoff(base=0.25, cap=4.0), 8, UNAVAILABLE)


@lru_cache(maxsize=4)
def shared_redis(url: str, max_connections: int = 64, *, patient: bool = False) -> redis.Redis:
    """``patient``: wait Redis out as above (a worker's runs); else redis-py's default
    retries, so that a command-line call or an API request fails fast."""
    options = {"retry": _retry()} if patient else {}
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, **options
    )
    return redis.Redis(connection_pool=pool)
