"""``redis://host:port/db?prefix=name``: answers shared by gateways on many machines.

Each entry is one Redis string ``<prefix>:<key>`` written with ``SET … PX`` so that Redis
expires it, holding the metadata line and the body (see ``CachedAnswer.to_bytes``). Each
call touches one key, so no hash tag is used: in Redis Cluster the entries spread over
every shard. ``prefix`` defaults to ``ts:cache``.

Calls never hang, and give up sooner than counter calls do (a miss is cheap, waiting is
not): the pool waits at most ``timeout`` seconds for a free connection (default 0.25),
sockets time out after ``socket_connect_timeout`` / ``socket_timeout`` (default 0.25 each),
and a guard around every call turns anything slower into StoreUnavailable. A dropped
connection is retried once on a fresh one (both calls are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tokenstile.cache.answer import CachedAnswer
from tokenstile.cache.store import StoreConfigError, StoreUnavailable
from tokenstile.clock import Clock
from tokenstile.stores.counters import redact_url

_PASSED_THROUGH = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "max_connections",
    "timeout", "health_check_interval", "client_name", "protocol",
})
_DEFAULTS: dict[str, Any] = {
    "socket_timeout": 0.25,
    "socket_connect_timeout": 0.25,
    "max_connections": 64,
    "timeout": 0.25,
}


class RedisResponseCache:
    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        del clock  # Redis expires keys by its own clock
        self.url = url
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise StoreConfigError(f"expected redis://host:port/db, got {redact_url(url)!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        options = dict(query)
        unknown = sorted(k for k in options
                         if k not in _PASSED_THROUGH | {"prefix"} and not k.startswith("ssl"))
        if unknown:
            raise StoreConfigError(f"unknown option(s) {', '.join(unknown)} in response cache "
                                   f"URL {redact_url(url)!r}")
        prefix = options.get("prefix", "ts:cache")
        if not prefix:
            raise StoreConfigError("the response cache prefix must not be empty")
        self.prefix = prefix + ":"
        kwargs = {k: v for k, v in _DEFAULTS.items() if k not in options}
        client_url = parts._replace(
            query=urlencode([(k, v) for k, v in query if k != "prefix"])
        ).geturl()
        try:
            self._pool = BlockingConnectionPool.from_url(
                client_url,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                **kwargs,
            )
        except ValueError as exc:
            raise StoreConfigError(f"bad response cache URL {redact_url(url)!r}: {exc}") from None
        conn = self._pool.connection_kwargs
        pool_wait = float(getattr(self._pool, "timeout", None) or 0.25)
        per_try = float(conn.get("socket_connect_timeout") or 0.25) + float(
            conn.get("socket_timeout") or 0.25
        )
        self._guard = pool_wait + 2 * per_try + 0.1
        self._client = Redis.from_pool(self._pool)
        self._closed = False

    async def _call(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``op`` within the guard, mapping every failure to StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable("the Redis response cache is closed")
        try:
            async with asyncio.timeout(self._guard):
                return await op()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis response cache {what} failed: {exc}") from None
        except (OSError, TimeoutError):
            raise StoreUnavailable(
                f"Redis response cache did not answer {what} within {self._guard:.2f} s"
            ) from None

    async def get(self, key: str) -> CachedAnswer | None:
        name = self.prefix + key
        blob = await self._call("get", lambda: self._client.get(name))
        return None if blob is None else CachedAnswer.from_bytes(bytes(blob))

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        name = self.prefix + key
        value = answer.to_bytes(ttl_s)
        px = max(1, round(ttl_s * 1000))
        await self._call("put", lambda: self._client.set(name, value, px=px))

    async def close(self) -> None:
        self._closed = True
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
