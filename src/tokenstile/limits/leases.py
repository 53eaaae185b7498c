"""Reservation leases: renewed while their request runs, claimed when their gateway died.

Every reservation carries a lease. While its request runs, the gateway renews it; a
reservation whose lease ran out belongs to a gateway that died, and is charged at its
estimate (its pending ledger row is written). Settles and releases that could not reach
the store wait here (``unsettled``) and keep their lease renewed until they are applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import orjson

from tokenstile.clock import Clock
from tokenstile.limits.store_health import STORE_RETRY_S, StoreHealth
from tokenstile.stores.counters import CounterStore, StoreUnavailable
from tokenstile.types import LedgerRow

log = logging.getLogger("tokenstile.admission")

# Settles and releases kept while the store is down; past this, the oldest are dropped
# (their leases run out and they are charged at their estimate: never under-counted).
MAX_UNSETTLED = 100_000


@dataclass(slots=True)
class Unsettled:
    """Counter changes that could not reach the store yet: ``deltas`` settle a reservation;
    ``adds`` (usage admitted unmetered) are applied instead when the store never held it."""

    deltas: list[tuple[str, int]]
    adds: list[tuple[str, int, int]] = field(default_factory=list)


class Leases:
    def __init__(self, counters: CounterStore, health: StoreHealth, clock: Clock,
                 lease_s: float) -> None:
        self.counters = counters
        self.health = health
        self.clock = clock
        self.lease_s = lease_s
        self.live: set[str] = set()  # reservations of this gateway not settled yet
        self.unsettled: dict[str, Unsettled] = {}

    def keep(self, rid: str, item: Unsettled) -> None:
        """Apply later (``maintain``); the lease stays renewed meanwhile, so the reservation
        is not charged at its estimate while its actual usage is known here."""
        if len(self.unsettled) >= MAX_UNSETTLED:
            dropped = next(iter(self.unsettled))
            self.unsettled.pop(dropped)
            self.live.discard(dropped)
            log.error("too many settles wait for the counter store; %s is left to its "
                      "lease (charged at its estimate)", dropped)
        self.unsettled[rid] = item
        self.live.add(rid)

    async def flush(self) -> int:
        """Apply what waited for the store, oldest first; stop at the first failure."""
        done = 0
        for rid, item in list(self.unsettled.items()):
            known = await self.health.call("settle",
                                           partial(self.counters.settle, rid, item.deltas))
            if not known and item.adds:
                await self.health.call("add", partial(self.counters.add, item.adds))
            self.unsettled.pop(rid, None)
            self.live.discard(rid)
            done += 1
        return done

    async def maintain(self, on_expired: Callable[[LedgerRow], None],
                       interval: float | None = None) -> None:
        """Until cancelled: apply what waited for the store, renew live leases and claim
        reservations whose gateway died.

        After an outage, claims wait until the store has answered for 1.5 intervals, so
        every gateway has renewed its live leases first (an outage longer than a lease must
        not charge requests that are still running).
        """
        interval = interval or max(0.2, self.lease_s / 3)
        upkeep_at = 0.0
        while True:
            if self.unsettled:
                with contextlib.suppress(StoreUnavailable):
                    await self.flush()
            elif self.health.down:
                with contextlib.suppress(StoreUnavailable):
                    await self.health.call("ping", self.counters.ping)
            if self.clock.monotonic() >= upkeep_at:
                upkeep_at = self.clock.monotonic() + interval
                if self.live:
                    with contextlib.suppress(StoreUnavailable):
                        await self.health.call("renew", lambda: self.counters.renew(
                            list(self.live), self.clock.now() + self.lease_s))
                if not self.health.down and self.health.healthy_for() >= 1.5 * interval:
                    with contextlib.suppress(Exception):
                        await self.recover(on_expired)
            busy = self.unsettled or self.health.down
            await asyncio.sleep(min(interval, STORE_RETRY_S) if busy else interval)

    async def recover(self, on_expired: Callable[[LedgerRow], None]) -> int:
        """Charge reservations whose lease ran out at their estimate; return how many.

        One of this gateway's own (still running, or waiting to settle) is not charged: its
        own row comes from the request, whose settle then corrects the counters (one left
        waiting to settle keeps the estimate).
        """
        claimed = await self.health.call("claim", lambda: self.counters.claim_expired(
            self.clock.now()))
        mine = {item.rid for item in claimed if item.rid in self.live}
        for rid in mine:
            self.unsettled.pop(rid, None)
            self.live.discard(rid)
        claimed = [item for item in claimed if item.rid not in mine]
        for item in claimed:
            try:
                row = LedgerRow(**orjson.loads(item.record))
            except (orjson.JSONDecodeError, TypeError):
                row = LedgerRow(id=item.rid, ts=self.clock.now(), outcome="unsettled",
                                estimated=True, status=0, flags=["charged_at_estimate"])
            on_expired(row)
        return len(claimed)
