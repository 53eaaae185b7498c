"""Pacing with an injected clock: no test sleeps to wait for a slot."""

from __future__ import annotations

import asyncio

import pytest

from tokenstile.clock import FakeClock
from tokenstile.degrade.throttle import Pacer, ThrottleRejected
from tokenstile.stores.counters_memory import MemoryCounterStore


def pacer(clock: FakeClock, max_wait: float = 10.0, queue: int = 100,
          store: MemoryCounterStore | None = None) -> Pacer:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return Pacer(clock, store or MemoryCounterStore(clock=clock), max_wait, queue, sleep=sleep)


async def observe(p: Pacer, clock: FakeClock, lane: str, count: int, every: float) -> None:
    """``count`` arrivals under the threshold, one every ``every`` seconds."""
    for _ in range(count):
        assert await p.pace(lane, None) == 0.0
        clock.advance(every)


async def test_paces_to_a_fraction_of_the_observed_rate() -> None:
    clock = FakeClock()
    p = pacer(clock)
    await observe(p, clock, "project:a", 59, 1.0)  # one request a second for a minute
    waits = [await p.pace("project:a", 0.5) for _ in range(4)]
    # half of one a second: a slot every two seconds
    assert waits == pytest.approx([0.0, 2.0, 2.0, 2.0], rel=0.05)


async def test_rejects_when_the_wait_would_be_too_long_without_taking_a_slot() -> None:
    clock = FakeClock()
    p = pacer(clock, max_wait=3.0)
    await observe(p, clock, "k", 59, 1.0)
    await p.pace("k", 0.25)  # a slot every 4 s
    with pytest.raises(ThrottleRejected) as rejected:
        await p.pace("k", 0.25)
    assert rejected.value.wait_s == pytest.approx(4.0, rel=0.05)
    clock.advance(4.0)
    assert await p.pace("k", 0.25) == 0.0


async def test_queue_depth_and_bound() -> None:
    clock = FakeClock()
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await gate.wait()

    p = Pacer(clock, MemoryCounterStore(clock=clock), max_wait_s=1000, max_queue=2, sleep=sleep)
    for _ in range(60):
        await p.pace("k", None)
        clock.advance(1.0)
    first = await p.pace("k", 1.0)
    waiting = [asyncio.create_task(p.pace("k", 1.0)) for _ in range(2)]
    await asyncio.sleep(0)
    assert first == 0.0 and p.depth == 2 and p.total_depth() == 2
    with pytest.raises(ThrottleRejected):  # this process's queue is full
        await p.pace("k", 1.0)
    gate.set()
    await asyncio.gather(*waiting)
    assert p.depth == 0


async def test_processes_sharing_a_store_pace_one_queue() -> None:
    """Two gateways on one store: the rate observed is their combined one, and they take
    turns in one queue of slots instead of each pacing a queue of its own."""
    clock = FakeClock()
    store = MemoryCounterStore(clock=clock)
    a, b = pacer(clock, store=store), pacer(clock, store=store)
    for _ in range(30):  # one a second on each: two a second together
        await a.pace("k", None)
        await b.pace("k", None)
        clock.advance(1.0)
    waits = [await (a if i % 2 == 0 else b).pace("k", 0.5) for i in range(4)]
    # half of two a second: one slot a second, whichever process asks
    assert waits == pytest.approx([0.0, 1.0, 1.0, 1.0], rel=0.05)
    # Each process estimates the queue every process waits in.
    assert a.total_depth() == b.total_depth() == 0
