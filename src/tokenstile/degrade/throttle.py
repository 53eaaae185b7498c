"""Throttling: past a budget's ``throttle`` threshold, a scope's requests are paced to a
fraction of their normal rate instead of being refused.

"Normal" is the scope's own request rate over the last minute, frozen when throttling
engages (so pacing does not tighten itself as it slows traffic down); with ``reduction:
0.5`` requests are spaced to half that rate. Each request waits for its slot in a bounded
queue; one whose wait would exceed ``max_wait_s`` (or that finds the queue full) is refused
with 429 at once, without taking a slot. Pacing is per gateway process: with N processes,
each paces its own share.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tokenstile.clock import Clock

OBSERVATION_S = 60.0
MIN_RATE_PER_S = 1.0 / 60.0


class ThrottleRejected(Exception):
    def __init__(self, wait_s: float) -> None:
        super().__init__(f"would wait {wait_s:.1f}s")
        self.wait_s = wait_s


@dataclass(slots=True)
class _Lane:
    arrivals: deque[float] = field(default_factory=deque)
    base_rate: float | None = None
    next_slot: float = 0.0
    waiting: int = 0


class Pacer:
    def __init__(self, clock: Clock, max_wait_s: float, max_queue: int,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.clock = clock
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._sleep = sleep
        self._lanes: dict[str, _Lane] = {}

    @property
    def depth(self) -> int:
        """Requests waiting in every lane (the queue-depth metric)."""
        return sum(lane.waiting for lane in self._lanes.values())

    def observe(self, key: str) -> None:
        """Count an arrival, throttled or not, so the normal rate is known when needed."""
        lane = self._lanes.setdefault(key, _Lane())
        now = self.clock.monotonic()
        lane.arrivals.append(now)
        while lane.arrivals and lane.arrivals[0] < now - OBSERVATION_S:
            lane.arrivals.popleft()

    def release(self, key: str) -> None:
        """The scope is back under its threshold (e.g. a new window): forget the pace."""
        lane = self._lanes.get(key)
        if lane is not None:
            lane.base_rate = None
            lane.next_slot = 0.0

    def _rate(self, lane: _Lane, reduction: float) -> float:
        if lane.base_rate is None:
            now = self.clock.monotonic()
            span = max(1.0, min(OBSERVATION_S, now - lane.arrivals[0])) if lane.arrivals \
                else OBSERVATION_S
            lane.base_rate = max(MIN_RATE_PER_S, len(lane.arrivals) / span)
        return max(MIN_RATE_PER_S, lane.base_rate * reduction)

    async def wait(self, key: str, reduction: float) -> float:
        """Wait for this request's slot; return the seconds waited, or raise
        ThrottleRejected when the wait would be longer than allowed."""
        lane = self._lanes.setdefault(key, _Lane())
        interval = 1.0 / self._rate(lane, reduction)
        now = self.clock.monotonic()
        slot = max(now, lane.next_slot)
        wait = slot - now
        if wait > self.max_wait_s or lane.waiting >= self.max_queue:
            raise ThrottleRejected(wait)
        lane.next_slot = slot + interval
        if wait <= 0:
            return 0.0
        lane.waiting += 1
        try:
            await self._sleep(wait)
        finally:
            lane.waiting -= 1
        return wait
