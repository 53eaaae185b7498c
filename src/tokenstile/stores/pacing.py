"""Throttle lanes: the shared state that paces a scope past its ``throttle`` threshold.

One lane per throttled scope (``<limit>:<scope id>``), kept in the counter store so that
every gateway process sharing the store paces the same lane: one queue of slots, one
observed rate. ``pace_step`` is the one operation, a pure function every backend runs
atomically (memory and SQLite on a ``Lane`` they keep; Redis as ``pace.lua``, which mirrors
it line for line):

- every call counts an arrival (in per-second buckets over the last ``OBSERVATION_S``), so
  the scope's normal rate is known across all processes when throttling engages;
- ``reduction=None`` (the scope is under its threshold) forgets the pace;
- otherwise the normal rate is frozen at its first throttled call (so pacing does not
  tighten itself as it slows traffic down), slots are spaced ``1 / (rate * reduction)``
  apart, and the call takes the next one unless it is more than ``max_wait_s`` away: then
  it is refused without taking a slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson

OBSERVATION_S = 60.0
MIN_RATE_PER_S = 1.0 / 60.0


@dataclass(frozen=True, slots=True)
class PaceOutcome:
    """What one call found: admitted with a slot ``wait_s`` away, or refused (the next slot
    is ``wait_s`` away, longer than allowed). ``queued`` counts the slots already given out
    and not yet due, by every process; ``next_slot`` (epoch seconds) and ``interval_s`` let a
    process estimate that queue later. ``interval_s`` is 0 when the scope is not paced."""

    admitted: bool
    wait_s: float = 0.0
    interval_s: float = 0.0
    queued: int = 0
    next_slot: float = 0.0


@dataclass(slots=True)
class Lane:
    """``first``: the earliest arrival still observed; ``buckets``: arrivals per whole
    second; ``rate``: the normal rate, frozen while throttled; ``next_slot``: the first free
    slot (epoch seconds)."""

    first: float | None = None
    buckets: dict[int, int] = field(default_factory=dict)
    rate: float | None = None
    next_slot: float = 0.0

    def to_json(self) -> bytes:
        return orjson.dumps({"f": self.first, "b": list(self.buckets.items()),
                             "r": self.rate, "n": self.next_slot})

    @classmethod
    def from_json(cls, blob: bytes | str) -> Lane:
        data = orjson.loads(blob)
        return cls(first=data["f"], buckets={int(b): int(n) for b, n in data["b"]},
                   rate=data["r"], next_slot=float(data["n"]))


def waiting_slots(next_slot: float, interval_s: float, now: float) -> int:
    """Slots given out before ``next_slot`` (one every ``interval_s``) still in the future."""
    if interval_s <= 0 or next_slot <= now:
        return 0
    return max(0, math.ceil((next_slot - now - 1e-6) / interval_s) - 1)


def pace_step(lane: Lane, now: float, reduction: float | None,
              max_wait_s: float) -> PaceOutcome:
    """Count an arrival at ``now`` and, when ``reduction`` is set, give out the next slot
    (or refuse); updates ``lane`` in place."""
    second = math.floor(now)
    for bucket in [b for b in lane.buckets if b + 1 <= now - OBSERVATION_S]:
        del lane.buckets[bucket]
    lane.buckets[second] = lane.buckets.get(second, 0) + 1
    oldest = min(lane.buckets)
    if lane.first is None:
        lane.first = now
    elif math.floor(lane.first) < oldest:
        lane.first = float(oldest)
    if reduction is None:
        lane.rate, lane.next_slot = None, 0.0
        return PaceOutcome(True)
    if lane.rate is None:
        span = max(1.0, min(OBSERVATION_S, now - lane.first))
        lane.rate = max(MIN_RATE_PER_S, sum(lane.buckets.values()) / span)
    interval = 1.0 / max(MIN_RATE_PER_S, lane.rate * reduction)
    queued = waiting_slots(lane.next_slot, interval, now)
    slot = max(now, lane.next_slot)
    wait = slot - now
    if wait > max_wait_s:
        return PaceOutcome(False, wait, interval, queued, lane.next_slot)
    lane.next_slot = slot + interval
    return PaceOutcome(True, wait, interval, queued, lane.next_slot)


def lane_ttl_s(max_wait_s: float) -> int:
    """How long an idle lane is kept: its observations and any slot it has given out."""
    return int(OBSERVATION_S + max_wait_s) + 1
