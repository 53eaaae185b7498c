"""The counter store: an atomic, all-or-nothing reserve / settle over named counters.

Counters are plain integers keyed by strings such as
``ts:project:production:tokens:day:20261122`` (built by ``tokenstile.limits``). A store does no
time arithmetic: callers compute the keys from their clock and pass them in.

The store also keeps throttle lanes (``pace``, see ``stores/pacing.py``): every process
sharing the store paces a throttled scope through the same queue of slots.

Every admission is exactly one ``reserve`` call (one round trip): for each charge, the sum of
its ``window_keys`` plus ``amount`` must stay within ``limit``; if any charge fails, nothing
is written. The reservation is remembered under its id with a lease deadline and an opaque
``record`` (the pending ledger row), so that a reservation whose gateway died can be found
after its lease runs out and charged at its estimate (``claim_expired``).

A charge may carry an ``Allowance`` (``limits/allowance.py``): its cap then changes with
rollover and proration, worked out inside the same atomic call from the budget's
first-seen marker and its previous window's counter; a missing marker is written then.

Counters that outlive their ``ttl`` disappear (read as 0). A settle that arrives after its
window's counter is gone drops that delta: the window is over, and the ledger keeps the
truth. Values never go below zero on settle, so a counter rebuilt without a reservation can
only over-count, never open room for an overshoot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from tokenstile.limits.allowance import SEEN_TTL_S, Allowance, first_seen, window_amount
from tokenstile.stores.pacing import PaceOutcome as PaceOutcome
from tokenstile.stores.urls import StoreConfigError as StoreConfigError
from tokenstile.stores.urls import backend_class
from tokenstile.stores.urls import option_number as option_number
from tokenstile.stores.urls import redact_url as redact_url
from tokenstile.stores.urls import url_options as url_options

if TYPE_CHECKING:
    from tokenstile.clock import Clock


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Charge:
    """One counter a reservation touches.

    ``key`` is incremented by ``amount``. Admission compares ``sum(window_keys) + amount`` with
    ``limit`` (``window_keys`` defaults to ``(key,)``; rolling windows list their buckets).
    ``limit=None`` counts without capping. ``ttl`` (seconds) lets the store drop the key once
    its window is over; a store only ever extends a key's expiry (``ttl <= 0`` sets none).
    ``allowance``: the cap rolls over or is prorated (not with ``window_keys``).
    """

    key: str
    amount: int
    limit: int | None
    ttl: int
    window_keys: tuple[str, ...] = ()
    allowance: Allowance | None = None

    def keys_to_sum(self) -> tuple[str, ...]:
        return self.window_keys or (self.key,)


@dataclass(slots=True)
class ReserveOutcome:
    """What ``reserve`` found.

    ``used[i]`` is the sum of charge i's window *before* this reservation. ``admitted`` is
    true when every capped charge fitted; ``failed`` lists the indexes that did not.
    ``limits[i]`` is the cap charge i was held to (its ``limit``, rolled over or prorated
    by its allowance); empty from a reservation already held.
    """

    admitted: bool
    used: list[int]
    failed: list[int] = field(default_factory=list)
    limits: list[int | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExpiredReservation:
    """A reservation whose lease ran out: its ``record`` and the (key, amount) it reserved."""

    rid: str
    record: bytes
    deltas: tuple[tuple[str, int], ...]


class CounterStore(Protocol):
    url: str

    async def reserve(
        self, rid: str, charges: Sequence[Charge], lease_until: float, record: bytes
    ) -> ReserveOutcome:
        """Atomically check and add every charge, or none; remember the reservation.

        Each capped charge must satisfy ``sum(keys_to_sum) + added <= limit``, where
        ``added`` is everything this call adds to those keys (just ``amount`` unless charges
        share keys). A ``rid`` that is already held is not charged twice: the call reports
        ``admitted=True`` and changes nothing, so a retry after a lost reply is safe.
        """
        ...

    async def settle(self, rid: str, deltas: Sequence[tuple[str, int]]) -> bool:
        """Add each (key, delta) (delta = actual - reserved, may be negative) and forget the
        reservation. Returns False (and changes nothing) if the reservation is unknown, e.g.
        already claimed as expired. Deltas for keys that no longer exist are dropped, and a
        value that would go negative stops at zero.

        ``settle(rid, [(key, -amount), ...])`` releases a reservation; after a reserve that
        raised StoreUnavailable it is also the safe way to undo a reserve that may have
        landed.
        """
        ...

    async def renew(self, rids: Sequence[str], lease_until: float) -> None:
        """Push the lease deadline of live reservations forward (never backward); unknown
        ids are ignored."""
        ...

    async def claim_expired(self, now: float, limit: int = 100) -> list[ExpiredReservation]:
        """Atomically remove and return reservations whose lease ended before ``now`` (at most
        ``limit``, earliest deadline first); their charges stay counted (they are billed at
        the estimate)."""
        ...

    async def add(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        """Unconditionally add (key, amount, ttl) triples, e.g. usage that needs no check."""
        ...

    async def read(self, keys: Sequence[str]) -> list[int]:
        """Current values (0 for missing keys)."""
        ...

    async def pace(self, lane: str, now: float, reduction: float | None, max_wait_s: float,
                   ttl: int) -> PaceOutcome:
        """Atomically count an arrival on the throttle lane ``lane`` and, when ``reduction``
        is set, take its next slot unless that is more than ``max_wait_s`` away
        (``stores/pacing.py``); an idle lane disappears after ``ttl`` seconds."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached."""
        ...

    async def close(self) -> None: ...


class Check(NamedTuple):
    """One charge as a backend evaluates it: indexes of the keys it sums, what this
    reservation adds to them, and the cap; with an allowance, the indexes of its first-seen
    marker and of its previous window's counter (-1: none)."""

    limit: int | None
    sums: tuple[int, ...]
    added: int
    allowance: tuple[Allowance, int, int] | None = None


class ReservationPlan(NamedTuple):
    """Charges reduced to what a backend executes, so every backend shares one semantics.

    ``keys`` lists every key read, the written ones first: ``writes[i]`` is the
    ``(amount, ttl)`` added to ``keys[i]``. ``deltas`` are the charges' (key, amount) pairs,
    remembered with the reservation.
    """

    keys: tuple[str, ...]
    writes: tuple[tuple[int, int], ...]
    checks: tuple[Check, ...]
    deltas: tuple[tuple[str, int], ...]

    def evaluate(self, values: Sequence[int]) -> tuple[list[int], list[int]]:
        """``(used, failed)`` given the current value of each of ``keys``."""
        used, failed, _ = self.judge(values)
        return used, failed

    def judge(self, values: Sequence[int]) -> tuple[list[int], list[int], list[int | None]]:
        """``(used, failed, limits)``: ``evaluate`` and the cap each check was held to."""
        used: list[int] = []
        failed: list[int] = []
        limits: list[int | None] = []
        for index, (limit, sums, added, allowance) in enumerate(self.checks):
            total = values[sums[0]] if len(sums) == 1 else sum(values[k] for k in sums)
            used.append(total)
            if limit is not None and allowance is not None:
                rule, seen, previous = allowance
                when = first_seen(values[seen], rule.now, rule.start, total)
                limit = window_amount(limit, when, rule,
                                      values[previous] if previous >= 0 else 0)
            limits.append(limit)
            if limit is not None and total + added > limit:
                failed.append(index)
        return used, failed, limits

    def markers(self, values: Sequence[int]) -> list[tuple[str, int | None, int]]:
        """First-seen markers to write: ``(key, value, ttl)``, with value None for a marker
        already there (its expiry only moves later)."""
        out: dict[str, tuple[str, int | None, int]] = {}
        for check in self.checks:
            if check.allowance is None:
                continue
            rule, seen, _ = check.allowance
            value: int | None = None
            if values[seen] <= 0:
                total = sum(values[k] for k in check.sums)
                value = first_seen(0, rule.now, rule.start, total)
            if rule.seen not in out or value is not None:
                out[rule.seen] = (rule.seen, value, SEEN_TTL_S)
        return list(out.values())

    def already_held(self, values: Sequence[int]) -> ReserveOutcome:
        """The outcome for a repeated ``rid``: nothing changes, ``used`` excludes ourselves."""
        used = [sum(values[k] for k in c.sums) - c.added for c in self.checks]
        return ReserveOutcome(admitted=True, used=used)


def plan_reservation(charges: Sequence[Charge]) -> ReservationPlan:
    """Validate charges and work out increments per key and what each check adds."""
    amounts: dict[str, int] = {}
    ttls: dict[str, int] = {}
    for charge in charges:
        key, amount = charge.key, charge.amount
        if amount < 0:
            raise ValueError(f"charge amounts must be >= 0, got {amount} for {key}")
        if key in amounts:
            amounts[key] += amount
            ttls[key] = max(ttls[key], charge.ttl)
        else:
            amounts[key] = amount
            ttls[key] = charge.ttl
    index = {key: i for i, key in enumerate(amounts)}

    def read(key: str | None) -> int:
        if key is None:
            return -1
        if key not in index:
            index[key] = len(index)
        return index[key]

    checks = []
    for charge in charges:
        if charge.allowance is not None:
            if charge.window_keys:
                raise ValueError(f"a rolling window cannot roll over or be prorated: "
                                 f"{charge.key}")
            rule = charge.allowance
            checks.append(Check(charge.limit, (index[charge.key],), amounts[charge.key],
                                (rule, read(rule.seen), read(rule.previous))))
            continue
        if not charge.window_keys:
            checks.append(Check(charge.limit, (index[charge.key],), amounts[charge.key]))
            continue
        window = dict.fromkeys(charge.window_keys)
        for key in window:
            read(key)
        added = sum(amounts.get(key, 0) for key in window)
        checks.append(Check(charge.limit, tuple(index[key] for key in window), added))
    return ReservationPlan(
        tuple(index),
        tuple(zip(amounts.values(), ttls.values(), strict=True)),
        tuple(checks),
        tuple((charge.key, charge.amount) for charge in charges),
    )


def merge_deltas(deltas: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Sum deltas per key, keeping first-seen order."""
    merged: dict[str, int] = {}
    for key, delta in deltas:
        merged[key] = merged.get(key, 0) + delta
    return merged


CounterStoreFactory = Callable[[str], CounterStore]


def counter_store_from_url(url: str, *, clock: Clock | None = None) -> CounterStore:
    """Build a counter store from its URL: ``memory://``, ``sqlite:///path``, ``redis://…``.

    ``clock`` times key expiry in the memory and SQLite stores (Redis uses its own clock).
    """
    store: CounterStore = backend_class("counter store", url)(url, clock=clock)
    return store
