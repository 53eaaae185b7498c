"""The response cache the request path uses: a store chosen by URL behind a guard.

The backends (``memory://``, ``sqlite:///path``, ``redis://…``) live in ``tokenstile.stores``
and raise ``StoreUnavailable`` when they cannot answer. ``GuardedCache`` wraps one: a cache
is an optimization, so its failures must never fail or slow a request. When the backend
fails the guard logs once, counts, answers "miss" and drops writes, and leaves the backend
alone for ``retry_after_s`` so that an unreachable server costs one timeout per period
instead of one per request. Answers larger than ``max_entry_bytes`` are not stored: big
answers are rare, expensive to keep and quick to evict everything else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenstile.cache.answer import CachedAnswer, CorruptEntry
from tokenstile.clock import SYSTEM_CLOCK
from tokenstile.stores.cache import ResponseCache, response_cache_from_url
from tokenstile.stores.counters import StoreConfigError, StoreUnavailable, redact_url

if TYPE_CHECKING:

    from tokenstile.clock import Clock

__all__ = [
    "DEFAULT_MAX_ENTRY_BYTES",
    "CacheStats",
    "GuardedCache",
    "ResponseCache",
    "StoreConfigError",
    "StoreUnavailable",
    "open_response_cache",
    "response_cache_from_url",
]

log = logging.getLogger("tokenstile.cache")

DEFAULT_MAX_ENTRY_BYTES = 1 << 20
DEFAULT_RETRY_AFTER_S = 5.0


def open_response_cache(
    url: str,
    *,
    clock: Clock | None = None,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    retry_after_s: float = DEFAULT_RETRY_AFTER_S,
) -> GuardedCache:
    """The cache the request path uses: a backend from ``url`` behind a ``GuardedCache``."""
    return GuardedCache(response_cache_from_url(url, clock=clock), clock=clock,
                        max_entry_bytes=max_entry_bytes, retry_after_s=retry_after_s)


@dataclass(slots=True)
class CacheStats:
    """Counts since start, for metrics. ``skipped`` are calls not attempted during an
    outage; ``errors`` are backend failures; ``corrupt`` undecodable entries (misses)."""

    hits: int = 0
    misses: int = 0
    puts: int = 0
    too_big: int = 0
    errors: int = 0
    skipped: int = 0
    corrupt: int = 0


class GuardedCache:
    """A backend that never raises and never waits on a backend known to be down."""

    def __init__(
        self,
        backend: ResponseCache,
        *,
        clock: Clock | None = None,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    ) -> None:
        if max_entry_bytes <= 0:
            raise StoreConfigError(f"max_entry_bytes must be > 0, got {max_entry_bytes}")
        self.backend = backend
        self.url = backend.url
        self.max_entry_bytes = max_entry_bytes
        self.retry_after_s = retry_after_s
        self.stats = CacheStats()
        self._clock = clock or SYSTEM_CLOCK
        self._down = False
        self._retry_at = 0.0

    @property
    def available(self) -> bool:
        """False while the guard is waiting out a backend failure."""
        return not self._down

    def _skip(self) -> bool:
        if self._down and self._clock.monotonic() < self._retry_at:
            self.stats.skipped += 1
            return True
        return False

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats.errors += 1
        self._retry_at = self._clock.monotonic() + self.retry_after_s
        if self._down:
            return
        self._down = True
        unexpected = not isinstance(exc, StoreUnavailable)
        log.warning("response cache %s: %s failed (%s); serving without the cache, retrying "
                    "in %.0f s", redact_url(self.url), what, exc, self.retry_after_s,
                    exc_info=unexpected)

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            log.warning("response cache %s is reachable again", redact_url(self.url))

    async def get(self, key: str) -> CachedAnswer | None:
        if self._skip():
            return None
        try:
            answer = await self.backend.get(key)
        except CorruptEntry:
            self._succeeded()
            self.stats.corrupt += 1
            self.stats.misses += 1
            return None
        except Exception as exc:
            self._failed("get", exc)
            return None
        self._succeeded()
        if answer is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return answer

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        if answer.size > self.max_entry_bytes:
            self.stats.too_big += 1
            return
        if self._skip():
            return
        try:
            await self.backend.put(key, answer, ttl_s)
        except Exception as exc:
            self._failed("put", exc)
            return
        self._succeeded()
        self.stats.puts += 1

    async def lock(self, key: str, token: str, ttl_s: float) -> bool:
        """Take the single-flight lock on ``key``; a backend that cannot answer lets the
        caller go ahead (true), as if there were nothing to wait for."""
        if self._skip():
            return True
        try:
            taken = await self.backend.lock(key, token, ttl_s)
        except Exception as exc:
            self._failed("lock", exc)
            return True
        self._succeeded()
        return taken

    async def unlock(self, key: str, token: str) -> None:
        if self._skip():
            return
        try:
            await self.backend.unlock(key, token)
        except Exception as exc:
            self._failed("unlock", exc)
            return
        self._succeeded()

    async def close(self) -> None:
        try:
            await self.backend.close()
        except Exception:
            log.exception("closing the response cache %s failed", redact_url(self.url))
