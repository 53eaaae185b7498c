"""Pacing with an injected clock: no test sleeps to wait for a slot."""

from __future__ import annotations

import asyncio

import pytest

from tokenstile.clock import FakeClock
from tokenstile.degrade.throttle import Pacer, ThrottleRejected


def pacer(clock: FakeClock, max_wait: float = 10.0, queue: int = 100) -> Pacer:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return Pacer(clock, max_wait, queue, sleep=sleep)


async def test_paces_to_a_fraction_of_the_observed_rate() -> None:
    clock = FakeClock()
    p = pacer(clock)
    for _ in range(60):  # one request a second for a minute
        p.observe("project:a")
        clock.advance(1.0)
    waits = [await p.wait("project:a", 0.5) for _ in range(4)]
    # half of one a second: a slot every two seconds
    assert waits == [0.0, 2.0, 2.0, 2.0]


async def test_rejects_when_the_wait_would_be_too_long_without_taking_a_slot() -> None:
    clock = FakeClock()
    p = pacer(clock, max_wait=3.0)
    for _ in range(60):
        p.observe("k")
        clock.advance(1.0)
    await p.wait("k", 0.25)  # a slot every 4 s
    with pytest.raises(ThrottleRejected) as rejected:
        await p.wait("k", 0.25)
    assert rejected.value.wait_s == pytest.approx(4.0)
    clock.advance(4.0)
    assert await p.wait("k", 0.25) == 0.0


async def test_queue_depth_and_bound() -> None:
    clock = FakeClock()
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await gate.wait()

    p = Pacer(clock, max_wait_s=1000, max_queue=2, sleep=sleep)
    for _ in range(60):
        p.observe("k")
        clock.advance(1.0)
    first = await p.wait("k", 1.0)
    waiting = [asyncio.create_task(p.wait("k", 1.0)) for _ in range(2)]
    await asyncio.sleep(0)
    assert first == 0.0 and p.depth == 2
    with pytest.raises(ThrottleRejected):
        await p.wait("k", 1.0)
    gate.set()
    await asyncio.gather(*waiting)
    assert p.depth == 0


async def test_the_pace_is_frozen_while_throttled_and_forgotten_on_release() -> None:
    clock = FakeClock()
    p = pacer(clock)
    for _ in range(30):
        p.observe("k")
        clock.advance(2.0)  # one every two seconds
    await p.wait("k", 1.0)
    assert await p.wait("k", 1.0) == pytest.approx(2.0)
    for _ in range(120):  # traffic changes; the frozen pace does not
        p.observe("k")
        clock.advance(0.5)
    assert await p.wait("k", 1.0) == 0.0
    p.release("k")
    assert await p.wait("k", 1.0) == 0.0
    assert await p.wait("k", 1.0) == pytest.approx(0.5)
