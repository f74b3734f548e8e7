"""fal-client's AsyncClient on connection pools sized for the poller's status checks.

fal-client's own AsyncClient keeps 20 idle connections (httpx's default) behind its
backup-domain transport, which wraps a second httpx client: with hundreds of checks at
once, most connections were closed after one answer and the next check paid a new TLS
handshake. Here: every connection kept alive, one httpx layer, no cookie jar (fal
authenticates with a header). And several small pools rather than one large one:
httpcore (1.0.9) walks every connection of a pool, several times and with two system
calls for each idle one, whenever a request starts or ends (``AsyncConnectionPool.
_assign_requests_to_connections``), so a pool's cost per request grows with its size.
Status and cancel calls only; a check that cannot connect is tried again later, so fal's
backup domains are not used.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import fal_client
import httpx
from asyncstdlib import cached_property as async_cached_property  # as fal-client does
from fal_client import client as fal_client_module


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: parsing every answer for cookies costs CPU for nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.AsyncClient):
    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("this client keeps no cookies")


@dataclass(unsafe_hash=True)
class StatusClient(fal_client.AsyncClient):
    """``status`` and ``cancel`` as fal-client does them, on a pool of ``connections``."""

    connections: int = 256
    keepalive_s: float = 60.0

    @async_cached_property(asyncio.Lock)
    async def _client(self) -> httpx.AsyncClient:
        auth = await self._auth
        limits = httpx.Limits(
            max_connections=self.connections,
            max_keepalive_connections=self.connections,
            keepalive_expiry=self.keepalive_s,
        )
        # honours SSL_CERT_FILE (the emulator's CA) as httpx's default context does
        transport = httpx.AsyncHTTPTransport(limits=limits, retries=0)
        return _Client(
            transport=transport,
            headers={
                "Authorization": auth.header_value,
                "User-Agent": fal_client_module.USER_AGENT,
            },
            timeout=self.default_timeout,
        )


#: connections of one pool (see the module's docstring)
POOL_SIZE = 16


class StatusClients:
    """``concurrency`` connections to fal as pools of POOL_SIZE, taken in turn."""

    def __init__(self, key: str, concurrency: int, keepalive_s: float = 60.0) -> None:
        count = max(1, -(-concurrency // POOL_SIZE))
        size = min(concurrency, POOL_SIZE)
        self._clients = [
            StatusClient(key=key, connections=size, keepalive_s=keepalive_s) for _ in range(count)
        ]
        self._turn = itertools.cycle(self._clients)

    async def status(self, application: str, request_id: str) -> fal_client.Status:
        return await next(self._turn).status(application, request_id)

    async def cancel(self, application: str, request_id: str) -> None:
        await next(self._turn).cancel(application, request_id)

    async def aclose(self) -> None:
        for client in self._clients:
            if "_client" in vars(client):  # opened (fal-client caches it): a next use reopens
                await (await client._client).aclose()
                del client._client


async def close_fal(fal: object) -> None:
    """Close fal-client's connections (its cached httpx client: a next use opens anew)."""
    close = getattr(fal, "aclose", None)
    if close is not None:
        await close()
    elif isinstance(fal, fal_client.AsyncClient) and "_client" in vars(fal):
        await (await fal._client).aclose()
        del fal._client
