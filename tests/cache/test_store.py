"""The guard that makes any response-cache failure a miss, and what an entry holds. (The
suite over every backend is tests/stores/test_response_cache.py.)"""

from __future__ import annotations

import logging
import time

import pytest

from tokenstile.cache.answer import CachedAnswer, CorruptEntry, account_hit
from tokenstile.cache.store import (
    GuardedCache,
    StoreConfigError,
    StoreUnavailable,
    open_response_cache,
)
from tokenstile.clock import FakeClock
from tokenstile.stores.cache_memory import MemoryResponseCache
from tokenstile.types import Usage

BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'


def answer(body: bytes = BODY, cost: int = 1234, created_at: float = 1_767_225_600.0
           ) -> CachedAnswer:
    return CachedAnswer(api="chat", wire="openai", body=body, model="gpt-4o-mini",
                        usage=Usage(10, 5, 2, 1, 3), cost_nano=cost, created_at=created_at,
                        ttl_s=60.0)


def test_entry_encoding_round_trip_and_corruption() -> None:
    original = answer(body=b"a\nb")
    assert CachedAnswer.from_bytes(original.to_bytes()) == original
    assert CachedAnswer.from_bytes(original.to_bytes(ttl_s=5)).ttl_s == 5
    for bad in (b"", b"{}", b'{"v":99}\n', b"\xff\n", b'{"v":1,"api":"nope"}\n{}'):
        with pytest.raises(CorruptEntry):
            CachedAnswer.from_bytes(bad)


def test_guard_refuses_a_bad_entry_bound() -> None:
    with pytest.raises(StoreConfigError):
        open_response_cache("memory://", max_entry_bytes=0)


def test_a_hit_is_free_and_saves_the_original_cost() -> None:
    hit = account_hit(answer(cost=5_000, created_at=100.0), now=130.5)
    assert hit.cost_nano == 0 and hit.usage.total_tokens == 0
    assert hit.saved_nano == 5_000 and hit.served_model == "gpt-4o-mini"
    assert hit.detail == {"cache_age_s": 30.5, "saved_input_tokens": 10,
                          "saved_output_tokens": 5}


# -- the guard --------------------------------------------------------------------------------


class Broken:
    """A backend that is down (or up again) on demand, counting every call it gets."""

    url = "broken://"

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.inner = MemoryResponseCache()

    async def get(self, key: str) -> CachedAnswer | None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("no route to host")
        return await self.inner.get(key)

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("no route to host")
        await self.inner.put(key, answer, ttl_s)

    async def close(self) -> None:
        raise RuntimeError("even closing fails")


async def test_guard_turns_failures_into_misses_and_backs_off(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    broken = Broken()
    cache = GuardedCache(broken, clock=clock, retry_after_s=5)
    with caplog.at_level(logging.WARNING, logger="tokenstile.cache"):
        assert await cache.get("k") is None
        await cache.put("k", answer(), 60)
        assert await cache.get("k") is None
        assert broken.calls == 1  # the backend is left alone while it is down
        assert cache.stats.errors == 1 and cache.stats.skipped == 2 and not cache.available
        clock.advance(5)
        assert await cache.get("k") is None  # tried again, still down: still one log line
        assert broken.calls == 2
        assert len([r for r in caplog.records if "serving without" in r.message]) == 1
        broken.down = False
        clock.advance(5)
        await cache.put("k", answer(), 60)
        assert await cache.get("k") == answer()
        assert cache.available
        assert any("reachable again" in r.message for r in caplog.records)
        await cache.close()  # a failing close is logged, not raised


async def test_guard_survives_unexpected_errors() -> None:
    class Buggy(Broken):
        async def get(self, key: str) -> CachedAnswer | None:
            raise KeyError(key)

    cache = GuardedCache(Buggy(), clock=FakeClock())
    assert await cache.get("k") is None
    assert cache.stats.errors == 1


async def test_unreachable_redis_costs_one_short_timeout() -> None:
    clock = FakeClock()
    cache = open_response_cache("redis://127.0.0.1:1/0?socket_connect_timeout=0.2", clock=clock)
    try:
        started = time.monotonic()
        assert await cache.get("k") is None
        for _ in range(100):
            assert await cache.get("k") is None
            await cache.put("k", answer(), 60)
        assert time.monotonic() - started < 2.0
        assert cache.stats.errors == 1 and cache.stats.skipped == 200
    finally:
        await cache.close()


def test_client_directives_only_take_away() -> None:
    from tokenstile.cache.directives import CacheUse, cache_use

    assert cache_use({}) == CacheUse(True, True)
    assert cache_use({"x-tokenstile-cache": "skip"}) == CacheUse(False, False)
    assert cache_use({"x-tokenstile-cache": "Refresh"}) == CacheUse(False, True)
    assert cache_use({"x-tokenstile-cache": "no-store"}) == CacheUse(True, False)
    assert cache_use({"cache-control": "no-cache, max-age=0"}) == CacheUse(False, True)
    assert cache_use({"cache-control": "no-cache", "x-tokenstile-cache": "no-store"}) == \
        CacheUse(False, False)
    assert cache_use({"x-tokenstile-cache": "force, hit, always"}) == CacheUse(True, True)
