"""Single flight on its own: followers wait for the leader's answer, never longer than
``wait_s``, and leaders in two processes (two instances on one store) take turns."""

from __future__ import annotations

import asyncio

from tokenstile.cache.answer import CachedAnswer
from tokenstile.cache.flight import SingleFlight
from tokenstile.cache.store import GuardedCache
from tokenstile.stores.cache_memory import MemoryResponseCache
from tokenstile.types import Usage

ANSWER = CachedAnswer(api="chat", wire="openai", body=b"{}", model="gpt-4o-mini",
                      usage=Usage(1, 1), cost_nano=5, created_at=0.0, ttl_s=60.0)


async def test_followers_get_the_leaders_answer() -> None:
    cache = GuardedCache(MemoryResponseCache())
    flights = SingleFlight(cache, wait_s=5)

    async def read() -> CachedAnswer | None:
        return await cache.get("k")

    answer, leader = await flights.miss("k", read)
    assert answer is None and leader is not None and leader.token is not None
    followers = [asyncio.create_task(flights.miss("k", read)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(f.done() for f in followers)
    await cache.put("k", ANSWER, 60)
    await flights.land(leader)
    assert [await f for f in followers] == [(ANSWER, None)] * 3
    assert flights.in_flight == 0
    assert await cache.lock("k", "other", 5)  # the leader's lock is gone


async def test_a_leader_without_an_answer_hands_over_and_nobody_waits_too_long() -> None:
    cache = GuardedCache(MemoryResponseCache())
    flights = SingleFlight(cache, wait_s=5)

    async def read() -> CachedAnswer | None:
        return await cache.get("k")

    _, leader = await flights.miss("k", read)
    assert leader is not None
    followers = [asyncio.create_task(flights.miss("k", read)) for _ in range(2)]
    await asyncio.sleep(0.01)
    await flights.land(leader)  # no answer was stored: one follower leads next
    done, pending = await asyncio.wait(followers, return_when=asyncio.FIRST_COMPLETED)
    [(answer, second)] = [task.result() for task in done]
    assert answer is None and second is not None and len(pending) == 1
    await cache.put("k", ANSWER, 60)
    await flights.land(second)
    assert await pending.pop() == (ANSWER, None)  # the other one is served its answer
    # a leader that never lands: a newcomer waits at most wait_s, then goes on its own
    _, stuck = await flights.miss("j", read)
    assert stuck is not None
    flights.wait_s = 0.05
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await flights.miss("j", read) == (None, None)
    assert loop.time() - started < 1


async def test_two_processes_on_one_store_take_turns() -> None:
    backend = MemoryResponseCache()
    a = SingleFlight(GuardedCache(backend), wait_s=5)
    b = SingleFlight(GuardedCache(backend), wait_s=5)

    async def read() -> CachedAnswer | None:
        return await backend.get("k")

    _, leader = await a.miss("k", read)
    assert leader is not None and leader.token is not None
    other = asyncio.create_task(b.miss("k", read))  # finds the lock taken: polls
    await asyncio.sleep(0.05)
    assert not other.done()
    await backend.put("k", ANSWER, 60)
    await a.land(leader)
    assert await other == (ANSWER, None)
