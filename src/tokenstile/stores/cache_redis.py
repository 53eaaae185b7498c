"""``redis://host:port/db?prefix=name``: answers shared by gateways on many machines.

Each entry is one Redis string ``<prefix>:<key>`` written with ``SET … PX`` so that Redis
expires it, holding the metadata line and the body (see ``CachedAnswer.to_bytes``). A miss being
answered takes ``<prefix>:lock:<key>`` with ``SET NX PX`` so that identical misses in other
processes wait for its answer instead of going upstream too. Each
call touches one key, so no hash tag is used: in Redis Cluster the entries spread over
every shard. ``prefix`` defaults to ``ts:cache``.

Calls never hang (``stores/redis_client.py``), and give up sooner than counter calls do (a
miss is cheap, waiting is not): the pool waits at most ``timeout`` seconds for a free
connection (default 0.25), sockets time out after ``socket_connect_timeout`` /
``socket_timeout`` (default 0.25 each), and a guard around every call turns anything slower
into StoreUnavailable. A dropped connection is retried once on a fresh one (both calls are
idempotent).
"""

from __future__ import annotations

from tokenstile.cache.answer import CachedAnswer
from tokenstile.clock import Clock
from tokenstile.stores.redis_client import RedisConnection
from tokenstile.stores.urls import StoreConfigError

# Delete a lock only while the token that took it still holds it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisResponseCache:
    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        del clock  # Redis expires keys by its own clock
        self.url = url
        self._redis = RedisConnection(url, "response cache", wait_s=0.25, slack_s=0.1)
        prefix = "ts:cache" if self._redis.prefix is None else self._redis.prefix
        if not prefix:
            raise StoreConfigError("the response cache prefix must not be empty")
        self.prefix = prefix + ":"
        self._client = self._redis.client
        self._unlock = self._client.register_script(_UNLOCK)

    async def get(self, key: str) -> CachedAnswer | None:
        name = self.prefix + key
        blob = await self._redis.call("get", lambda: self._client.get(name))
        return None if blob is None else CachedAnswer.from_bytes(bytes(blob))

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        name = self.prefix + key
        value = answer.to_bytes(ttl_s)
        px = max(1, round(ttl_s * 1000))
        await self._redis.call("put", lambda: self._client.set(name, value, px=px))

    async def lock(self, key: str, token: str, ttl_s: float) -> bool:
        name = self.prefix + "lock:" + key
        px = max(1, round(ttl_s * 1000))
        taken = await self._redis.call(
            "lock", lambda: self._client.set(name, token, nx=True, px=px))
        return bool(taken)

    async def unlock(self, key: str, token: str) -> None:
        name = self.prefix + "lock:" + key
        await self._redis.call("unlock", lambda: self._unlock(keys=[name], args=[token]))

    async def close(self) -> None:
        await self._redis.close()
