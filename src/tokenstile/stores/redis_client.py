"""What every store kept in Redis shares: the URL's options, one bounded pool, and a guard.

URL options: ``prefix`` (each store says what it names), redis-py's ``db``,
``socket_timeout``, ``socket_connect_timeout``, ``socket_keepalive``, ``max_connections``
(default 64), ``timeout``, ``health_check_interval``, ``client_name``, ``protocol`` and
``ssl_*``; anything else is a configuration error.

A ``redis+cluster://host:port[,host:port…]`` (or ``rediss+cluster://``) URL is a Redis
Cluster: the nodes listed are where discovery starts, redis-py's cluster client
(``redis.asyncio.cluster.RedisCluster``) routes each command to the shard of its keys,
and ``db`` is not allowed (a cluster has only database 0).

Calls never hang: the pool waits at most ``timeout`` seconds for a free connection (a
``BlockingConnectionPool``: the default pool raises past its size instead of waiting),
sockets time out after ``socket_connect_timeout`` / ``socket_timeout``, and a guard around
every call turns anything slower into StoreUnavailable. Each store picks the default of
those three. A dropped connection is retried once on a fresh one, so a store's calls must
be safe to repeat, or (scripts on one server) say they are not. Replies are parsed by
hiredis (redis-py uses it when it is installed). On one server, the script calls of one
turn of the event loop go out together (``run_script``, ``stores/redis_pipeline.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.redis_pipeline import Pipelined
from tokenstile.stores.urls import StoreConfigError, redact_url

_PASSED_THROUGH = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "max_connections",
    "timeout", "health_check_interval", "client_name", "protocol",
})


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class RedisConnection:
    """A client on its own bounded pool for one store's URL.

    ``wait_s`` is the default pool wait and socket timeouts; the guard allows one retry of
    each plus ``slack_s``. ``prefix`` is the URL's ``prefix`` option, None when absent;
    ``own`` names further options the store reads itself (``options`` has them all).
    ``cluster`` says whether ``client`` is a Redis Cluster client.
    """

    client: Any

    def __init__(self, url: str, what: str, *, wait_s: float, slack_s: float,
                 own: frozenset[str] = frozenset()) -> None:
        self.what = what
        parts = urlsplit(url)
        self.cluster = parts.scheme in CLUSTER_SCHEMES
        if parts.scheme not in ("redis", "rediss") and not self.cluster:
            raise StoreConfigError(f"expected redis://host:port/db or "
                                   f"redis+cluster://host:port, got {redact_url(url)!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        options = dict(query)
        self.options = options
        allowed = _PASSED_THROUGH | {"prefix"} | own
        unknown = sorted(k for k in options if k not in allowed and not k.startswith("ssl"))
        if self.cluster and "db" in options:
            unknown.append("db (a cluster has only database 0)")
        if unknown:
            raise StoreConfigError(
                f"unknown option(s) {', '.join(unknown)} in {what} URL {redact_url(url)!r}"
            )
        self.prefix = options.get("prefix")
        self._closed = False
        self._slots: asyncio.Semaphore | None = None
        self._pipelined: Pipelined | None = None  # on one server: scripts sent together
        if self.cluster:
            self._cluster(url, parts.scheme, query, wait_s, slack_s, own)
            return
        defaults: dict[str, Any] = {"socket_timeout": wait_s, "socket_connect_timeout": wait_s,
                                    "max_connections": 64, "timeout": wait_s}
        kwargs = {k: v for k, v in defaults.items() if k not in options}
        client_url = parts._replace(
            query=urlencode([(k, v) for k, v in query if k != "prefix" and k not in own])
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
        self._pipelined = Pipelined(pool, self.guard)

    def _cluster(self, url: str, scheme: str, query: list[tuple[str, str]], wait_s: float,
                 slack_s: float, own: frozenset[str]) -> None:
        """A cluster client: one bounded pool per node (``max_connections`` each); a call
        waits at most ``timeout`` for a free connection there."""
        netloc = urlsplit(url).netloc
        userinfo, _, hosts = netloc.rpartition("@")
        nodes: list[ClusterNode] = []
        try:
            for item in hosts.split(","):
                host, _, port = item.strip().rpartition(":")
                if not host or not port:
                    raise ValueError(f"expected host:port, got {item!r}")
                nodes.append(ClusterNode(host.strip("[]"), int(port)))
            passed = [(k, v) for k, v in query if k not in {"prefix", "timeout"} | own]
            first = f"{nodes[0].host}:{nodes[0].port}"
            kwargs: dict[str, Any] = dict(parse_url(
                f"{CLUSTER_SCHEMES[scheme]}://{userinfo + '@' if userinfo else ''}{first}/"
                f"?{urlencode(passed)}"))
        except ValueError as exc:
            raise StoreConfigError(f"bad {self.what} URL {redact_url(url)!r}: {exc}") from None
        for name in ("host", "port", "db", "connection_class"):
            kwargs.pop(name, None)
        if CLUSTER_SCHEMES[scheme] == "rediss":
            kwargs["ssl"] = True
        kwargs.setdefault("socket_timeout", wait_s)
        kwargs.setdefault("socket_connect_timeout", wait_s)
        # The cluster client's pools refuse a call past their size instead of waiting: calls
        # wait here for one of ``max_connections`` slots (a node never needs more), with a
        # few connections to spare for the client's own discovery.
        size = int(kwargs.pop("max_connections", 64))
        self._slots = asyncio.Semaphore(size)
        kwargs["max_connections"] = size + 8
        per_try = float(kwargs["socket_connect_timeout"]) + float(kwargs["socket_timeout"])
        pool_wait = float(self.options.get("timeout") or wait_s)
        # Discovery (CLUSTER SLOTS) may come first, and a MOVED answer costs another try.
        self.guard = pool_wait + 3 * per_try + slack_s
        self.client = RedisCluster(
            startup_nodes=nodes, retry=Retry(NoBackoff(), 1), **kwargs)

    async def call(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``op`` within the guard, mapping every failure to StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable(f"the Redis {self.what} is closed")
        try:
            async with asyncio.timeout(self.guard):
                if self._slots is None:
                    return await op()
                async with self._slots:
                    return await op()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise self._unavailable(what, exc) from None

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, RedisError | RedisClusterException):
            return StoreUnavailable(f"Redis {self.what} {what} failed: {exc}")
        return StoreUnavailable(f"Redis {self.what} did not answer {what} within "
                                f"{self.guard:g} s")

    async def run_script(self, what: str, script: Any, keys: Sequence[Any],
                         args: Sequence[Any], *, repeatable: bool = True) -> Any:
        """``script`` (registered with ``client.register_script``) on ``keys`` and
        ``args``, bounded like ``call``. On one server it goes out with the other script
        calls of this turn of the event loop (``stores/redis_pipeline.py``), whose batch
        carries the guard's timer, and where a call that is not ``repeatable`` fails rather
        than go again after a broken connection."""
        pipelined = self._pipelined
        if pipelined is None:
            return await self.call(what, lambda: script(keys=keys, args=args))
        if self._closed:
            raise StoreUnavailable(f"the Redis {self.what} is closed")
        try:
            return await pipelined.evalsha(script.sha, keys, args, repeatable)
        except NoScriptError:  # not run: load it and run it (redis-py's Script does)
            return await self.call(what, lambda: script(keys=keys, args=args))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(what, exc) from None

    async def close(self) -> None:
        self._closed = True
        if self._pipelined is not None:
            await self._pipelined.close()
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self.client.aclose()
