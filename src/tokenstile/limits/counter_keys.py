"""Which counter a limit charges at a given time: ``scope:id:unit:window:label`` keys."""

from __future__ import annotations

import hashlib
import math

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
    prefix = f"{limit.scope}:{_key_part(scope_id)}:{limit.unit}:"
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


def charge_ttl(window: Window, now: float) -> int:
    """How long a counter of ``window`` must live from ``now``: to its window's end, plus
    a margin."""
    if window.kind in ("rolling", "run"):
        return ttl_seconds(window, now)
    return max(1, math.ceil(_current(window, now)[1] - now)) + TTL_MARGIN_S
