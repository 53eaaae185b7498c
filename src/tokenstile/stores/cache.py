"""The response cache store: a small interface, and backends chosen by URL.

Backends (``memory://``, ``sqlite:///path``, ``redis://…``) only store and fetch entries and
raise ``StoreUnavailable`` when they cannot; ``tokenstile.cache.GuardedCache`` wraps one so
that a failure becomes a miss. An entry that cannot be decoded raises ``CorruptEntry``.
Each also keeps short locks (``lock`` / ``unlock``) so that identical misses in several
processes go upstream once (``cache/flight.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tokenstile.stores.urls import backend_class

if TYPE_CHECKING:
    from tokenstile.cache.answer import CachedAnswer
    from tokenstile.clock import Clock


class ResponseCache(Protocol):
    url: str

    async def get(self, key: str) -> CachedAnswer | None:
        """The live entry under ``key``, or None (missing or expired)."""
        ...

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        """Store ``answer`` under ``key`` for ``ttl_s`` seconds, replacing any entry."""
        ...

    async def lock(self, key: str, token: str, ttl_s: float) -> bool:
        """Take the short lock on ``key`` for ``ttl_s`` seconds unless another holder has
        it: true when taken (single flight across the processes sharing the store)."""
        ...

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock on ``key`` if ``token`` still holds it."""
        ...

    async def close(self) -> None: ...


def response_cache_from_url(url: str, *, clock: Clock | None = None) -> ResponseCache:
    """A bare backend (it raises StoreUnavailable): ``memory://``, ``sqlite:///path``,
    ``redis://host:port/db?prefix=name``. ``clock`` times expiry in memory and SQLite
    (Redis expires keys by its own clock)."""
    store: ResponseCache = backend_class("response cache", url)(url, clock=clock)
    return store
