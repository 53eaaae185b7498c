"""One store suite over every backend (memory, SQLite, real Redis), and the guard that makes
any backend failure a miss."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from tokenstile.cache.answer import CachedAnswer, CorruptEntry, account_hit
from tokenstile.cache.store import (
    GuardedCache,
    ResponseCache,
    StoreConfigError,
    StoreUnavailable,
    open_response_cache,
    response_cache_from_url,
)
from tokenstile.cache.store_memory import MemoryResponseCache
from tokenstile.clock import FakeClock
from tokenstile.types import Usage

from .conftest import Backend

BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'


def answer(body: bytes = BODY, cost: int = 1234, created_at: float = 1_767_225_600.0
           ) -> CachedAnswer:
    return CachedAnswer(api="chat", wire="openai", body=body, model="gpt-4o-mini",
                        usage=Usage(10, 5, 2, 1, 3), cost_nano=cost, created_at=created_at,
                        ttl_s=60.0)


async def test_miss_then_hit(store: ResponseCache) -> None:
    assert await store.get("k1") is None
    await store.put("k1", answer(), 60)
    got = await store.get("k1")
    assert got == answer()
    assert got.usage == Usage(10, 5, 2, 1, 3)
    assert await store.get("k2") is None


async def test_put_replaces_and_records_the_ttl(store: ResponseCache) -> None:
    await store.put("k", answer(cost=1), 60)
    await store.put("k", answer(body=b'{"a":1}', cost=2), 30)
    got = await store.get("k")
    assert got is not None and got.cost_nano == 2 and got.body == b'{"a":1}'
    assert got.ttl_s == 30


async def test_entries_expire(store: ResponseCache, backend: Backend) -> None:
    await store.put("short", answer(), 10)
    await store.put("long", answer(), 1000)
    backend.expire("short", 10)
    assert await store.get("short") is None
    assert await store.get("long") is not None


async def test_entries_live_until_their_ttl(backend: Backend) -> None:
    if backend.name == "redis":
        pytest.skip("Redis keeps its own time (its expiry is checked in test_entries_expire)")
    store = backend.make()
    try:
        await store.put("k", answer(), 10)
        backend.clock.advance(9.99)
        assert await store.get("k") is not None
        backend.clock.advance(0.01)
        assert await store.get("k") is None
    finally:
        await store.close()


async def test_binary_and_large_bodies_survive(store: ResponseCache) -> None:
    body = bytes(range(256)) * 2048 + b"\n\n\x00"
    await store.put("bin", answer(body=body), 60)
    got = await store.get("bin")
    assert got is not None and got.body == body


async def test_closed_store_is_unavailable(backend: Backend) -> None:
    store = backend.make()
    await store.put("k", answer(), 60)
    await store.close()
    if backend.name == "memory":
        assert await store.get("k") is None  # nothing to reach: a closed LRU is just empty
        return
    with pytest.raises(StoreUnavailable):
        await store.get("k")


async def test_guarded_backend_counts(backend: Backend) -> None:
    cache = GuardedCache(backend.make(), clock=backend.clock, max_entry_bytes=1000)
    try:
        assert await cache.get("k") is None
        await cache.put("k", answer(), 60)
        assert await cache.get("k") is not None
        await cache.put("big", answer(body=b"x" * 1000), 60)
        assert await cache.get("big") is None
        assert (cache.stats.hits, cache.stats.misses, cache.stats.puts,
                cache.stats.too_big) == (1, 2, 1, 1)
    finally:
        await cache.close()


# -- backend specifics ------------------------------------------------------------------------


async def test_memory_is_a_bounded_lru() -> None:
    store = MemoryResponseCache("memory://?max_entries=3", clock=FakeClock())
    for key in "abc":
        await store.put(key, answer(), 60)
    assert await store.get("a") is not None  # a is now the most recently used
    await store.put("d", answer(), 60)
    assert await store.get("b") is None
    assert {k for k in "acd" if await store.get(k) is not None} == set("acd")

    small = MemoryResponseCache("memory://?max_bytes=2000", clock=FakeClock())
    await small.put("one", answer(body=b"x" * 800), 60)
    await small.put("two", answer(body=b"y" * 800), 60)
    assert await small.get("one") is None and await small.get("two") is not None
    assert small.bytes <= 2000
    await small.put("huge", answer(body=b"z" * 5000), 60)
    assert await small.get("huge") is None and len(small) == 1


async def test_memory_hands_out_independent_copies() -> None:
    store = MemoryResponseCache(clock=FakeClock())
    await store.put("k", answer(), 60)
    first = await store.get("k")
    assert first is not None
    first.usage.add(Usage(100, 100))
    second = await store.get("k")
    assert second is not None and second.usage == Usage(10, 5, 2, 1, 3)


async def test_sqlite_purges_expired_rows_lazily(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "c.db"
    store = response_cache_from_url(f"sqlite:///{path}", clock=clock)
    try:
        for i in range(5):
            await store.put(f"old{i}", answer(), 10)
        clock.advance(61)  # past the entries' expiry and the purge interval
        await store.put("new", answer(), 10)
        with sqlite3.connect(path) as conn:
            keys = {row[0] for row in conn.execute("SELECT key FROM response_cache")}
        assert keys == {"new"}
    finally:
        await store.close()


async def test_sqlite_is_shared_between_instances(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path}/sub/c.db"
    one = response_cache_from_url(url, clock=clock)
    two = response_cache_from_url(url, clock=clock)
    try:
        await one.put("k", answer(), 60)
        assert await two.get("k") == answer()
    finally:
        await one.close()
        await two.close()


async def test_redis_keys_carry_the_prefix(backend: Backend) -> None:
    if backend.name != "redis":
        pytest.skip("Redis only")
    store = backend.make()
    try:
        await store.put("abc", answer(), 5)
        with backend.redis() as client:
            keys = list(client.scan_iter(match=f"{backend.prefix}:*"))
            assert keys == [f"{backend.prefix}:abc".encode()]
            assert 0 < client.pttl(keys[0]) <= 5000
    finally:
        await store.close()


async def test_corrupt_entries_are_misses(backend: Backend) -> None:
    if backend.name != "redis":
        pytest.skip("Redis only: the other backends cannot be written to from outside")
    cache = GuardedCache(backend.make(), clock=backend.clock)
    try:
        with backend.redis() as client:
            client.set(f"{backend.prefix}:bad", b"not an entry")
        assert await cache.get("bad") is None
        assert cache.stats.corrupt == 1 and cache.available
    finally:
        await cache.close()


def test_entry_encoding_round_trip_and_corruption() -> None:
    original = answer(body=b"a\nb")
    assert CachedAnswer.from_bytes(original.to_bytes()) == original
    assert CachedAnswer.from_bytes(original.to_bytes(ttl_s=5)).ttl_s == 5
    for bad in (b"", b"{}", b'{"v":99}\n', b"\xff\n", b'{"v":1,"api":"nope"}\n{}'):
        with pytest.raises(CorruptEntry):
            CachedAnswer.from_bytes(bad)


def test_urls() -> None:
    for url in ("memcached://x", "sqlite:///", "sqlite:///:memory:", "memory://?bogus=1",
                "memory://?max_entries=-1", "sqlite:///x.db?max_entries=2",
                "redis://127.0.0.1:6379/0?unknown=1", "redis://127.0.0.1:6379/0?prefix="):
        with pytest.raises(StoreConfigError):
            response_cache_from_url(url)
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
