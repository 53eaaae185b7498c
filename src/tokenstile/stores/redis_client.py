"""What every store kept in Redis shares: the URL's options, one bounded pool, and a guard.

URL options: ``prefix`` (each store says what it names), redis-py's ``db``,
``socket_timeout``, ``socket_connect_timeout``, ``socket_keepalive``, ``max_connections``
(default 64), ``timeout``, ``health_check_interval``, ``client_name``, ``protocol`` and
``ssl_*``; anything else is a configuration error.

Calls never hang: the pool waits at most ``timeout`` seconds for a free connection (a
``BlockingConnectionPool``: the default pool raises past its size instead of waiting),
sockets time out after ``socket_connect_timeout`` / ``socket_timeout``, and a guard around
every call turns anything slower into StoreUnavailable. Each store picks the default of
those three. A dropped connection is retried once on a fresh one, so a store's calls must
be safe to repeat. Replies are parsed by hiredis (redis-py uses it when it is installed).
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

from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.urls import StoreConfigError, redact_url

_PASSED_THROUGH = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "max_connections",
    "timeout", "health_check_interval", "client_name", "protocol",
})


class RedisConnection:
    """A client on its own bounded pool for one store's URL.

    ``wait_s`` is the default pool wait and socket timeouts; the guard allows one retry of
    each plus ``slack_s``. ``prefix`` is the URL's ``prefix`` option, None when absent.
    """

    def __init__(self, url: str, what: str, *, wait_s: float, slack_s: float) -> None:
        self.what = what
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise StoreConfigError(f"expected redis://host:port/db, got {redact_url(url)!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        options = dict(query)
        unknown = sorted(k for k in options
                         if k not in _PASSED_THROUGH | {"prefix"} and not k.startswith("ssl"))
        if unknown:
            raise StoreConfigError(
                f"unknown option(s) {', '.join(unknown)} in {what} URL {redact_url(url)!r}"
            )
        self.prefix = options.get("prefix")
        defaults: dict[str, Any] = {"socket_timeout": wait_s, "socket_connect_timeout": wait_s,
                                    "max_connections": 64, "timeout": wait_s}
        kwargs = {k: v for k, v in defaults.items() if k not in options}
        client_url = parts._replace(
            query=urlencode([(k, v) for k, v in query if k != "prefix"])
        ).geturl()
        try:
            pool = BlockingConnectionPool.from_url(
                client_url,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                **kwargs,
            )
        except ValueError as exc:
            raise StoreConfigError(f"bad {what} URL {redact_url(url)!r}: {exc}") from None
        conn = pool.connection_kwargs
        pool_wait = float(getattr(pool, "timeout", None) or wait_s)
        per_try = float(conn.get("socket_connect_timeout") or wait_s) + float(
            conn.get("socket_timeout") or wait_s
        )
        self.guard = pool_wait + 2 * per_try + slack_s
        self.client = Redis.from_pool(pool)
        self._closed = False

    async def call(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``op`` within the guard, mapping every failure to StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable(f"the Redis {self.what} is closed")
        try:
            async with asyncio.timeout(self.guard):
                return await op()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis {self.what} {what} failed: {exc}") from None
        except (OSError, TimeoutError):
            raise StoreUnavailable(
                f"Redis {self.what} did not answer {what} within {self.guard:g} s"
            ) from None

    async def close(self) -> None:
        self._closed = True
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
