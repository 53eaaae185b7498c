"""How much a budget allows in one window, when it rolls over or is prorated.

Two per-limit options change a calendar budget's amount window by window:

- ``rollover: {max_percent: P}``: the part of the previous window's amount that went
  unused is added to this window's, up to P % of the amount. Only the previous window's own
  amount rolls over (what it had carried in itself and left unused does not roll again), so
  the carry never compounds past the cap.
- ``prorate: true``: in the window where a budget is first seen (its first charge, e.g. a
  key created mid-month), it allows the amount times the share of that window still left.

Both need one fact the gateway cannot know locally: when the budget was first charged. It
is kept on the counter store as a marker counter (``Allowance.seen``) written by the first
reservation, and the previous window's counter is read in the same atomic reservation, so
admission stays one store round trip. Every backend runs these functions (the Redis script
mirrors them line by line, in the same floating-point order, so the results agree to the
unit, past 2^53 too: see ``prorated``).

A budget whose counter already holds usage when its marker is missing (prorate or rollover
switched on mid-window, or a gateway upgraded) counts as seen since its window's start:
switching an option on never cuts the window in progress.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

SEEN_TTL_S = 400 * 86400
"""How long a first-seen marker outlives the budget's last charge: a budget not used for
that long counts as new again."""

_P53 = 2**53
_SPLIT = 10**9  # reserve.lua's two-part base


@dataclass(frozen=True, slots=True)
class Allowance:
    """What a store needs to work out a charge's cap in its window.

    ``seen``: the first-seen marker key; ``start``/``end``: the charge's window; ``now``: the
    caller's clock (the marker's value on a first charge). With rollover (``carry_cap`` > 0),
    ``previous`` is the previous window's counter and ``previous_start`` its start.
    """

    seen: str
    start: float
    end: float
    now: float
    prorate: bool = False
    previous: str | None = None
    previous_start: float = 0.0
    carry_cap: int = 0


def first_seen(marker: int, now: float, start: float, used: int) -> int:
    """When the budget was first charged (whole epoch seconds): its marker; else now, or its
    window's start when the window already holds usage."""
    if marker > 0:
        return marker
    return math.floor(start if used > 0 else now)


def prorated(amount: int, seen: float, start: float, end: float) -> int:
    """``amount`` times the share of the window [start, end) left after ``seen``, floored
    (in doubles, as Lua has them: within a unit of the exact share).

    The share is a double, so the product is taken in doubles too, in steps reserve.lua
    repeats exactly. Below 2^53 the amount is one exact double. From 2^53 on (nano-USD
    budgets past about 9 million USD) one product would be off by hundreds of units, so the
    amount is split into ``hi * 10^9 + lo``: ``hi * share`` gives whole units of 10^9 and a
    fraction, which is scaled back to units and added to ``lo * share``. That keeps the cap
    within about 10^3 units (10^-16 of the amount: the precision of the share itself) of
    the exact product, never above the amount, and the same on every backend.
    """
    if seen <= start or end <= start:
        return amount
    if seen >= end:
        return 0
    share = (end - seen) / (end - start)
    if amount < _P53:
        return math.floor(amount * share)
    hi, lo = divmod(amount, _SPLIT)
    top = hi * share
    whole = math.floor(top)
    return whole * _SPLIT + math.floor((top - whole) * _SPLIT + lo * share)


def carried(previous_amount: int, previous_used: int, cap: int) -> int:
    """What the previous window left unused, at most ``cap``."""
    return max(0, min(cap, previous_amount - previous_used))


def carry_cap(amount: int, max_percent: float) -> int:
    """The most a window may carry in: ``max_percent`` % of the amount (the percentage as
    written, in exact arithmetic: a double product is off by more than a unit past 2^53)."""
    return math.floor(Fraction(amount) * Fraction(repr(max_percent)) / 100)


def window_amount(amount: int, seen: float, allowance: Allowance, previous_used: int) -> int:
    """The cap of a budget of ``amount`` in the window of ``allowance``, first seen at
    ``seen``, whose previous window used ``previous_used``."""
    a = allowance
    own = prorated(amount, seen, a.start, a.end) if a.prorate else amount
    if a.carry_cap <= 0 or seen >= a.start:
        return own  # no window before this one to carry from
    before = prorated(amount, seen, a.previous_start, a.start) if a.prorate else amount
    return own + carried(before, previous_used, a.carry_cap)
