"""One bounded Redis connection pool per process for imagegen's own keys.

redis-py 8 raises MaxConnectionsError past a pool's limit; a blocking pool makes hundreds
of worker threads wait for a connection instead.
"""

from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache(maxsize=4)
def shared_redis(url: str, max_connections: int = 64) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
    return redis.Redis(connection_pool=pool)
