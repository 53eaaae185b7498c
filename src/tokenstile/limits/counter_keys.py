"""Which counter a limit charges at a given time: ``scope:id:unit:window:label`` keys; for a
limit that rolls over or is prorated, also its first-seen marker (``scope:id:unit:window:
seen``) and its previous window's counter, which the reservation reads (``allowance``)."""

from __future__ import annotations

import hashlib
import math

from tokenstile.limits.allowance import Allowance, carry_cap
from tokenstile.limits.model import Limit
from tokenstile.limits.windows import (
    TTL_MARGIN_S,
    Window,
    rolling_bucket_labels,
    ttl_seconds,
    window_bounds,
    window_end,
    window_label,
)


def _prefix(limit: Limit, scope_id: str) -> str:
    return f"{limit.scope}:{_key_part(scope_id)}:{limit.unit}:"


def _key_part(value: str) -> str:
    cleaned = value.replace("%", "%25").replace(":", "%3A").replace("{", "%7B") \
        .replace("}", "%7D")
    if len(cleaned) > 80:
        return "h" + hashlib.sha256(value.encode()).hexdigest()[:32]
    return cleaned


def counter_key(limit: Limit, scope_id: str, now: float) -> tuple[str, tuple[str, ...]]:
    """The counter a limit charges at ``now`` and, for rolling windows, every bucket summed.

    Keys read ``scope:id:unit:window:label``; limits that agree on all of these share one
    counter (and the tighter amount wins).
    """
    prefix = _prefix(limit, scope_id)
    window = limit.window
    if window.kind == "rolling":
        labels = rolling_bucket_labels(window, now)
        return prefix + labels[0], tuple(prefix + label for label in labels)
    if window.kind == "run":
        return prefix + "run", ()
    return prefix + current_label(window, now), ()


_labels: dict[Window, tuple[float, float, str]] = {}


def _current(window: Window, now: float) -> tuple[float, float, str]:
    """Bounds and ``kind:label`` of the calendar window holding ``now``, cached until it
    ends (zone arithmetic is the costliest part of building a charge)."""
    cached = _labels.get(window)
    if cached is not None and cached[0] <= now < cached[1]:
        return cached
    start, end = window_bounds(window, now)
    cached = (start, end, f"{window.kind}:{window_label(window, now)}")
    if len(_labels) > 1024:
        _labels.clear()
    _labels[window] = cached
    return cached


def current_label(window: Window, now: float) -> str:
    return _current(window, now)[2]


def reset_at(window: Window, now: float) -> float:
    """When the window holding ``now`` resets (``window_end``), cached like its label."""
    if window.kind in ("rolling", "request"):
        return window_end(window, now)
    return _current(window, now)[1]


_previous: dict[Window, tuple[float, float, float, str, float]] = {}


def _before(window: Window, now: float) -> tuple[str, float, float]:
    """``kind:label`` and start of the calendar window before the one holding ``now``, and
    when the one after it ends; cached like ``_current``."""
    start, end, _ = _current(window, now)
    cached = _previous.get(window)
    if cached is not None and cached[0] == start and cached[1] == end:
        return cached[3], cached[2], cached[4]
    previous_start, _ = window_bounds(window, start - 0.5)
    label = f"{window.kind}:{window_label(window, start - 0.5)}"
    _, following_end = window_bounds(window, end)
    if len(_previous) > 1024:
        _previous.clear()
    _previous[window] = (start, end, previous_start, label, following_end)
    return label, previous_start, following_end


def charge_ttl(window: Window, now: float, keep_next: bool = False) -> int:
    """How long a counter of ``window`` must live from ``now``: to its window's end, plus
    a margin; with ``keep_next`` (rollover reads it then), to the end of the next window."""
    if window.kind in ("rolling", "run"):
        return ttl_seconds(window, now)
    end = _before(window, now)[2] if keep_next else _current(window, now)[1]
    return max(1, math.ceil(end - now)) + TTL_MARGIN_S


def allowance(limit: Limit, scope_id: str, hard: int, now: float) -> Allowance:
    """What a reservation needs to roll ``limit`` (held at ``hard``) over from its previous
    window or prorate it (``limits/allowance.py``)."""
    prefix = _prefix(limit, scope_id)
    window = limit.window
    start, end, _ = _current(window, now)
    previous: str | None = None
    previous_start = 0.0
    if limit.rollover_percent > 0:
        label, previous_start, _ = _before(window, now)
        previous = prefix + label
    return Allowance(seen=f"{prefix}{window.kind}:seen", start=start, end=end, now=now,
                     prorate=limit.prorate, previous=previous, previous_start=previous_start,
                     carry_cap=carry_cap(hard, limit.rollover_percent))
