"""One response-cache suite, every backend: memory, SQLite (a temporary file) and real Redis
(its own key prefix in db 15: see conftest.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tokenstile.cache.answer import CachedAnswer
from tokenstile.cache.store import GuardedCache
from tokenstile.clock import FakeClock
from tokenstile.stores.cache import ResponseCache, response_cache_from_url
from tokenstile.stores.cache_memory import MemoryResponseCache
from tokenstile.stores.counters import StoreConfigError, StoreUnavailable
from tokenstile.types import Usage

if TYPE_CHECKING:
    from conftest import CacheBackend

BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'


def answer(body: bytes = BODY, cost: int = 1234, created_at: float = 1_767_225_600.0
           ) -> CachedAnswer:
    return CachedAnswer(api="chat", wire="openai", body=body, model="gpt-4o-mini",
                        usage=Usage(10, 5, 2, 1, 3), cost_nano=cost, created_at=created_at,
                        ttl_s=60.0)


async def test_miss_then_hit(cache_store: ResponseCache) -> None:
    assert await cache_store.get("k1") is None
    await cache_store.put("k1", answer(), 60)
    got = await cache_store.get("k1")
    assert got == answer()
    assert got.usage == Usage(10, 5, 2, 1, 3)
    assert await cache_store.get("k2") is None


async def test_put_replaces_and_records_the_ttl(cache_store: ResponseCache) -> None:
    await cache_store.put("k", answer(cost=1), 60)
    await cache_store.put("k", answer(body=b'{"a":1}', cost=2), 30)
    got = await cache_store.get("k")
    assert got is not None and got.cost_nano == 2 and got.body == b'{"a":1}'
    assert got.ttl_s == 30


async def test_entries_expire(cache_store: ResponseCache, cache_backend: CacheBackend) -> None:
    await cache_store.put("short", answer(), 10)
    await cache_store.put("long", answer(), 1000)
    cache_backend.expire("short", 10)
    assert await cache_store.get("short") is None
    assert await cache_store.get("long") is not None


async def test_entries_live_until_their_ttl(cache_backend: CacheBackend) -> None:
    if cache_backend.name == "redis":
        pytest.skip("Redis keeps its own time (its expiry is checked in test_entries_expire)")
    store = cache_backend.make()
    try:
        await store.put("k", answer(), 10)
        cache_backend.clock.advance(9.99)
        assert await store.get("k") is not None
        cache_backend.clock.advance(0.01)
        assert await store.get("k") is None
    finally:
        await store.close()


async def test_a_lock_has_one_holder_until_released_or_expired(
        cache_store: ResponseCache, cache_backend: CacheBackend) -> None:
    assert await cache_store.lock("k", "first", 10)
    assert not await cache_store.lock("k", "second", 10)
    assert await cache_store.lock("other", "second", 10)  # one lock per key
    await cache_store.unlock("k", "second")  # not its holder: nothing happens
    assert not await cache_store.lock("k", "third", 10)
    await cache_store.unlock("k", "first")
    assert await cache_store.lock("k", "third", 10)
    assert await cache_store.get("k") is None  # a lock is not an entry
    if cache_backend.name == "redis":
        with cache_backend.redis() as client:
            assert 0 < client.pttl(f"{cache_backend.prefix}:lock:k") <= 10_000
            client.delete(f"{cache_backend.prefix}:lock:k")
    else:
        cache_backend.clock.advance(10.001)
    assert await cache_store.lock("k", "fourth", 10)  # the holder's time ran out


async def test_an_unreachable_lock_lets_the_caller_go_ahead() -> None:
    backend = MemoryResponseCache()
    guarded = GuardedCache(backend)
    await backend.close()

    async def down(*args: object) -> bool:
        raise StoreUnavailable("down")

    backend.lock = down  # type: ignore[method-assign]
    assert await guarded.lock("k", "t", 10)
    assert guarded.stats.errors == 1


async def test_binary_and_large_bodies_survive(cache_store: ResponseCache) -> None:
    body = bytes(range(256)) * 2048 + b"\n\n\x00"
    await cache_store.put("bin", answer(body=body), 60)
    got = await cache_store.get("bin")
    assert got is not None and got.body == body


async def test_closed_store_is_unavailable(cache_backend: CacheBackend) -> None:
    store = cache_backend.make()
    await store.put("k", answer(), 60)
    await store.close()
    if cache_backend.name == "memory":
        assert await store.get("k") is None  # nothing to reach: a closed LRU is just empty
        return
    with pytest.raises(StoreUnavailable):
        await store.get("k")


async def test_guarded_backend_counts(cache_backend: CacheBackend) -> None:
    cache = GuardedCache(cache_backend.make(), clock=cache_backend.clock, max_entry_bytes=1000)
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


async def test_redis_keys_carry_the_prefix(cache_backend: CacheBackend) -> None:
    if cache_backend.name != "redis":
        pytest.skip("Redis only")
    store = cache_backend.make()
    try:
        await store.put("abc", answer(), 5)
        with cache_backend.redis() as client:
            keys = list(client.scan_iter(match=f"{cache_backend.prefix}:*"))
            assert keys == [f"{cache_backend.prefix}:abc".encode()]
            assert 0 < client.pttl(keys[0]) <= 5000
    finally:
        await store.close()


async def test_corrupt_entries_are_misses(cache_backend: CacheBackend) -> None:
    if cache_backend.name != "redis":
        pytest.skip("Redis only: the other backends cannot be written to from outside")
    cache = GuardedCache(cache_backend.make(), clock=cache_backend.clock)
    try:
        with cache_backend.redis() as client:
            client.set(f"{cache_backend.prefix}:bad", b"not an entry")
        assert await cache.get("bad") is None
        assert cache.stats.corrupt == 1 and cache.available
    finally:
        await cache.close()


def test_urls() -> None:
    for url in ("memcached://x", "sqlite:///", "sqlite:///:memory:", "memory://?bogus=1",
                "memory://?max_entries=-1", "sqlite:///x.db?max_entries=2",
                "redis://127.0.0.1:6379/0?unknown=1", "redis://127.0.0.1:6379/0?prefix="):
        with pytest.raises(StoreConfigError):
            response_cache_from_url(url)
