"""Throttling: past a budget's ``throttle`` threshold, a scope's requests are paced to a
fraction of their normal rate instead of being refused.

"Normal" is the scope's own request rate over the last minute, across every gateway
process that shares the counter store, frozen when throttling engages (so pacing does not
tighten itself as it slows traffic down); with ``reduction: 0.5`` requests are spaced to
half that rate. The slots are given out by the counter store (``CounterStore.pace``, one
atomic call: Lua in Redis, a transaction in SQLite), so N gateways pace one queue together
rather than N queues side by side. Each request waits for its slot here, in its own
process; one whose wait would exceed ``max_wait_s`` is refused with 429 at once, without
taking a slot, and so is one that finds this process's queue for its scope full
(``max_queue`` waiting).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tokenstile.clock import Clock
from tokenstile.stores.counters import CounterStore
from tokenstile.stores.pacing import lane_ttl_s, waiting_slots


class ThrottleRejected(Exception):
    def __init__(self, wait_s: float) -> None:
        super().__init__(f"would wait {wait_s:.1f}s")
        self.wait_s = wait_s


class Pacer:
    def __init__(self, clock: Clock, store: CounterStore, max_wait_s: float, max_queue: int,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.clock = clock
        self.store = store
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._sleep = sleep
        self._waiting: dict[str, int] = {}
        # lane -> (next free slot, interval) as this process last saw it
        self._seen: dict[str, tuple[float, float]] = {}

    @property
    def depth(self) -> int:
        """Requests waiting in this process (the per-process queue-depth metric)."""
        return sum(self._waiting.values())

    def total_depth(self) -> int:
        """Requests waiting in every process sharing the store, as of the last slot this
        process saw given out on each lane (the slots given out and not yet due)."""
        now = self.clock.now()
        total = 0
        for lane, (next_slot, interval) in list(self._seen.items()):
            if next_slot <= now:
                del self._seen[lane]
                continue
            total += waiting_slots(next_slot, interval, now)
        return max(total, self.depth)

    async def pace(self, lane: str, reduction: float | None) -> float:
        """Count an arrival on ``lane`` and, when throttled (``reduction`` set), wait for its
        slot; return the seconds waited, or raise ThrottleRejected when the wait would be
        longer than allowed. May raise StoreUnavailable."""
        full = reduction is not None and self._waiting.get(lane, 0) >= self.max_queue
        outcome = await self.store.pace(lane, self.clock.now(), reduction,
                                        -1.0 if full else self.max_wait_s,
                                        lane_ttl_s(self.max_wait_s))
        if outcome.interval_s <= 0:
            self._seen.pop(lane, None)
        else:
            self._seen[lane] = (outcome.next_slot, outcome.interval_s)
        if not outcome.admitted:
            raise ThrottleRejected(outcome.wait_s)
        if outcome.wait_s <= 0:
            return 0.0
        self._waiting[lane] = self._waiting.get(lane, 0) + 1
        try:
            await self._sleep(outcome.wait_s)
        finally:
            left = self._waiting[lane] - 1
            if left:
                self._waiting[lane] = left
            else:
                del self._waiting[lane]
        return outcome.wait_s
