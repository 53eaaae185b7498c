"""``memory://``: a bounded LRU of answers private to one process (tests, single workers).

Bounded twice, by entries and by bytes, so neither many small answers nor a few large ones
can grow the process without limit. Entries are kept encoded, exactly as the other backends
keep them, so every hit hands out a fresh ``CachedAnswer`` that no caller can alter for the
next one. URL options: ``max_entries`` (default 10000), ``max_bytes`` (default 64 MiB).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from tokenstile.cache.answer import CachedAnswer
from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.stores.urls import StoreConfigError, option_number, url_options


class _Entry(NamedTuple):
    expires_at: float
    meta: bytes
    body: bytes

    @property
    def size(self) -> int:
        return len(self.meta) + len(self.body) + 128


class MemoryResponseCache:
    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        if not url.startswith("memory://"):
            raise StoreConfigError(f"expected memory:// for the response cache, got {url!r}")
        options = url_options(url, ("max_entries", "max_bytes"), "response cache")
        self.url = url
        self.max_entries = int(option_number(options, "max_entries", 10_000))
        self.max_bytes = int(option_number(options, "max_bytes", 64 * 1024 * 1024))
        self._clock = clock or SYSTEM_CLOCK
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0
        self._locks: dict[str, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    async def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock.now():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return CachedAnswer.from_parts(entry.meta, entry.body)

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        self._drop(key)
        entry = _Entry(self._clock.now() + ttl_s, answer.meta(ttl_s), answer.body)
        if entry.size > self.max_bytes or ttl_s <= 0:
            return
        self._entries[key] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def lock(self, key: str, token: str, ttl_s: float) -> bool:
        now = self._clock.now()
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return False
        if len(self._locks) > 10_000:
            self._locks = {k: v for k, v in self._locks.items() if v[1] > now}
        self._locks[key] = (token, now + ttl_s)
        return True

    async def unlock(self, key: str, token: str) -> None:
        held = self._locks.get(key)
        if held is not None and held[0] == token:
            del self._locks[key]

    async def close(self) -> None:
        self._locks.clear()
        self._entries.clear()
        self.bytes = 0
