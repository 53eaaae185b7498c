"""The counter store: an atomic, all-or-nothing reserve / settle over named counters.

Counters are plain integers keyed by strings such as
``ts:project:production:tokens:day:20261122`` (built by ``tokenstile.limits``). A store does no
time arithmetic: callers compute the keys from their clock and pass them in.

Every admission is exactly one ``reserve`` call (one round trip): for each charge, the sum of
its ``window_keys`` plus ``amount`` must stay within ``limit``; if any charge fails, nothing
is written. The reservation is remembered under its id with a lease deadline and an opaque
``record`` (the pending ledger row), so that a reservation whose gateway died can be found
after its lease runs out and charged at its estimate (``claim_expired``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time."""


class StoreConfigError(ValueError):
    """A store URL names an unknown scheme or is malformed."""


@dataclass(frozen=True, slots=True)
class Charge:
    """One counter a reservation touches.

    ``key`` is incremented by ``amount``. Admission compares ``sum(window_keys) + amount`` with
    ``limit`` (``window_keys`` defaults to ``(key,)``; rolling windows list their buckets).
    ``limit=None`` counts without capping. ``ttl`` (seconds) lets the store drop the key once
    its window is over.
    """

    key: str
    amount: int
    limit: int | None
    ttl: int
    window_keys: tuple[str, ...] = ()

    def keys_to_sum(self) -> tuple[str, ...]:
        return self.window_keys or (self.key,)


@dataclass(slots=True)
class ReserveOutcome:
    """What ``reserve`` found.

    ``used[i]`` is the sum of charge i's window *before* this reservation. ``admitted`` is
    true when every capped charge fitted; ``failed`` lists the indexes that did not.
    """

    admitted: bool
    used: list[int]
    failed: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExpiredReservation:
    rid: str
    record: bytes
    deltas: tuple[tuple[str, int], ...]


class CounterStore(Protocol):
    url: str

    async def reserve(
        self, rid: str, charges: Sequence[Charge], lease_until: float, record: bytes
    ) -> ReserveOutcome:
        """Atomically check and add every charge, or none; remember the reservation."""
        ...

    async def settle(self, rid: str, deltas: Sequence[tuple[str, int]]) -> bool:
        """Add each (key, delta) (delta = actual - reserved, may be negative) and forget the
        reservation. Returns False (and changes nothing) if the reservation is unknown, e.g.
        already claimed as expired."""
        ...

    async def renew(self, rids: Sequence[str], lease_until: float) -> None:
        """Push the lease deadline of live reservations forward."""
        ...

    async def claim_expired(self, now: float, limit: int = 100) -> list[ExpiredReservation]:
        """Atomically remove and return reservations whose lease ended before ``now``; their
        charges stay counted (they are billed at the estimate)."""
        ...

    async def add(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        """Unconditionally add (key, amount, ttl) triples, e.g. usage that needs no check."""
        ...

    async def read(self, keys: Sequence[str]) -> list[int]:
        """Current values (0 for missing keys)."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached."""
        ...

    async def close(self) -> None: ...


CounterStoreFactory = Callable[[str], CounterStore]
_REGISTRY: dict[str, str] = {
    "memory": "tokenstile.stores.counters_memory:MemoryCounterStore",
    "sqlite": "tokenstile.stores.counters_sqlite:SqliteCounterStore",
    "redis": "tokenstile.stores.counters_redis:RedisCounterStore",
    "rediss": "tokenstile.stores.counters_redis:RedisCounterStore",
}


def counter_store_from_url(url: str) -> CounterStore:
    """Build a counter store from its URL: ``memory://``, ``sqlite:///path``, ``redis://…``."""
    import importlib

    scheme = url.split("://", 1)[0] if "://" in url else ""
    target = _REGISTRY.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in _REGISTRY)
        raise StoreConfigError(f"unknown counter store URL {url!r}: expected one of {known}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    store: CounterStore = cls(url)
    return store
