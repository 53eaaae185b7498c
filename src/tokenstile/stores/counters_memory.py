"""``memory://``: counters in a dict, for one process and for tests.

Every method runs to completion without awaiting, so on one event loop each call is atomic
without a lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.stores.counters import (
    Charge,
    ExpiredReservation,
    ReserveOutcome,
    StoreConfigError,
    StoreUnavailable,
    merge_deltas,
    plan_reservation,
    url_options,
)
from tokenstile.stores.pacing import Lane, PaceOutcome, pace_step

_PURGE_EVERY_S = 60.0


@dataclass(slots=True)
class _Held:
    deltas: tuple[tuple[str, int], ...]
    record: bytes
    lease_until: float


class MemoryCounterStore:
    """Counters and reservations in dicts; expiry is judged by ``clock``."""

    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        if not url.startswith("memory://") or url.split("?", 1)[0] != "memory://":
            raise StoreConfigError(f"a memory counter store URL is just 'memory://', not {url!r}")
        url_options(url, (), "counter store")
        self.url = url
        self._clock = clock or SYSTEM_CLOCK
        self._values: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._held: dict[str, _Held] = {}
        self._lanes: dict[str, tuple[Lane, float]] = {}
        self._next_purge = 0.0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the memory counter store is closed")

    def _get(self, key: str, now: float) -> int | None:
        """The live value of ``key``, or None when it is missing or expired."""
        expires = self._expires.get(key)
        if expires is not None and expires <= now:
            del self._expires[key]
            self._values.pop(key, None)
            return None
        return self._values.get(key)

    def _incr(self, key: str, amount: int, ttl: int, now: float) -> None:
        self._values[key] = (self._get(key, now) or 0) + amount
        if ttl > 0:
            self._expires[key] = max(self._expires.get(key, 0.0), now + ttl)

    def _purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + _PURGE_EVERY_S
        for key in [k for k, when in self._expires.items() if when <= now]:
            del self._expires[key]
            self._values.pop(key, None)
        for key in [k for k, (_, when) in self._lanes.items() if when <= now]:
            del self._lanes[key]

    async def reserve(
        self, rid: str, charges: Sequence[Charge], lease_until: float, record: bytes
    ) -> ReserveOutcome:
        self._check_open()
        plan = plan_reservation(charges)
        now = self._clock.now()
        self._purge(now)
        values = [self._get(key, now) or 0 for key in plan.keys]
        if rid in self._held:
            return plan.already_held(values)
        used, failed, limits = plan.judge(values)
        for key, value, ttl in plan.markers(values):
            if value is not None:
                self._values[key] = value
            self._expires[key] = max(self._expires.get(key, 0.0), now + ttl)
        if failed:
            return ReserveOutcome(admitted=False, used=used, failed=failed, limits=limits)
        for key, (amount, ttl) in zip(plan.keys, plan.writes, strict=False):
            self._incr(key, amount, ttl, now)
        self._held[rid] = _Held(plan.deltas, bytes(record), lease_until)
        return ReserveOutcome(admitted=True, used=used, limits=limits)

    async def settle(self, rid: str, deltas: Sequence[tuple[str, int]]) -> bool:
        self._check_open()
        if self._held.pop(rid, None) is None:
            return False
        now = self._clock.now()
        for key, delta in merge_deltas(deltas).items():
            value = self._get(key, now)
            if value is not None:
                self._values[key] = max(0, value + delta)
        return True

    async def renew(self, rids: Sequence[str], lease_until: float) -> None:
        self._check_open()
        for rid in rids:
            held = self._held.get(rid)
            if held is not None:
                held.lease_until = max(held.lease_until, lease_until)

    async def claim_expired(self, now: float, limit: int = 100) -> list[ExpiredReservation]:
        self._check_open()
        expired = sorted(
            (held.lease_until, rid) for rid, held in self._held.items() if held.lease_until < now
        )[: max(0, limit)]
        out = []
        for _, rid in expired:
            held = self._held.pop(rid)
            out.append(ExpiredReservation(rid, held.record, held.deltas))
        return out

    async def add(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        self._check_open()
        now = self._clock.now()
        for key, amount, ttl in deltas:
            self._incr(key, amount, ttl, now)

    async def read(self, keys: Sequence[str]) -> list[int]:
        self._check_open()
        now = self._clock.now()
        return [self._get(key, now) or 0 for key in keys]

    async def pace(self, lane: str, now: float, reduction: float | None, max_wait_s: float,
                   ttl: int) -> PaceOutcome:
        self._check_open()
        clock_now = self._clock.now()
        self._purge(clock_now)
        found = self._lanes.get(lane)
        state = found[0] if found is not None and found[1] > clock_now else Lane()
        outcome = pace_step(state, now, reduction, max_wait_s)
        self._lanes[lane] = (state, clock_now + ttl)
        return outcome

    async def ping(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True
