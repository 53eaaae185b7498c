"""Window arithmetic: where a limit's window starts and ends, and what its counter is called.

Everything here is a pure function of a ``Window`` and an instant ``now`` (epoch seconds):
no clock reads and no I/O, so every edge case is tested with explicit instants.

Calendar windows follow the wall clock of an IANA time zone, so budgets reset when the
people who own them expect: a Europe/Berlin day starts at local midnight and is 23 or 25
hours long on DST change days, an Asia/Kolkata hour starts at :30 UTC. Each window is the
longest stretch of time over which its label stays the same, so consecutive windows touch
(``window_start(w, window_end(w, t)) == window_end(w, t)``) and never overlap.

Labels (the last part of a counter key) are compact and stable, read in local time:
``202611`` (month), ``2026W47`` (ISO week, Monday start), ``20261122`` (day),
``20261122T14`` (hour), ``20261122T1405`` (minute).

When clocks fall back, a local hour happens twice. Day, week and month windows follow the
local date, so the repeated hour belongs to the same day key (and where clocks once went
back across midnight, the repeated minutes stay in the date that had already begun). A day
whose midnight falls in a DST gap starts at the jump. Hour and minute windows must
not merge two real hours into one counter (that would double the rate), so they are split
wherever the UTC offset changes, and a label whose local start time is ambiguous (or that
starts mid-hour because the offset changed) gets the offset appended:
``20261025T02+0200`` then ``20261025T02+0100`` in Europe/Berlin. Two windows without a
suffix both start exactly on the same wall-clock boundary only if that wall time occurs
twice, which is the ambiguous case, so labels never collide.

Time zone offsets change only on whole seconds, which the transition searches rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenstile.types import WindowKind

TTL_MARGIN_S = 60
"""Counters outlive their window by this much, so late settles and skewed clocks still land."""

DEFAULT_BUCKETS = 60
_SUBDAY_SECONDS = {"minute": 60, "hour": 3600}
_KINDS: tuple[str, ...] = get_args(WindowKind)
_ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Window:
    """A window kind, the time zone its calendar follows, and for rolling windows their length.

    A rolling window of ``length_s`` is counted in ``buckets`` fixed buckets of
    ``ceil(length_s / buckets)`` seconds aligned to the epoch. A ``run`` window (an agent
    run's budget, ``limits/runs.py``) has one counter that lives until ``length_s`` has
    passed without a call.
    """

    kind: WindowKind
    tz: str = "UTC"
    length_s: int | None = None
    buckets: int = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown window kind {self.kind!r}: expected one of {_KINDS}")
        try:
            _zone(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}") from exc
        if self.kind in ("rolling", "run"):
            if self.length_s is None or self.length_s <= 0:
                raise ValueError(f"a {self.kind} window needs length_s > 0")
            if self.buckets < 1:
                raise ValueError("a rolling window needs at least one bucket")
        elif self.length_s is not None:
            raise ValueError(f"length_s only applies to rolling windows, not {self.kind!r}")

    @property
    def counted(self) -> bool:
        """False for per-request limits, which are checked against the request alone."""
        return self.kind != "request"

    @property
    def bucket_s(self) -> int:
        if self.kind != "rolling" or self.length_s is None:
            raise ValueError(f"a {self.kind!r} window has no buckets")
        return max(1, -(-self.length_s // self.buckets))


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _offset(zone: ZoneInfo, t: float) -> int:
    """UTC offset in whole seconds at instant ``t``."""
    off = datetime.fromtimestamp(t, zone).utcoffset()
    return 0 if off is None else off // _ONE_SECOND


def _first_change(zone: ZoneInfo, lo: float, hi: float) -> int:
    """The first whole second in (lo, hi] whose offset differs from the offset at ``lo``.

    Callers guarantee the offsets at ``lo`` and ``hi`` differ.
    """
    a, b = math.floor(lo), math.floor(hi)
    base = _offset(zone, a)
    while b - a > 1:
        mid = (a + b) // 2
        if _offset(zone, mid) == base:
            a = mid
        else:
            b = mid
    return b


def _first_instant_of(zone: ZoneInfo, day: date) -> float:
    """The first instant whose local wall time is at or after ``day`` 00:00.

    Usually local midnight; where midnight falls in a DST gap, the moment of the jump.
    """
    naive = datetime(day.year, day.month, day.day)
    aware = naive.replace(tzinfo=zone)  # fold=0: the earlier instant when ambiguous
    t = aware.timestamp()
    if datetime.fromtimestamp(t, zone).replace(tzinfo=None) == naive:
        return t
    before = aware.utcoffset()
    after = aware.replace(fold=1).utcoffset()
    shift = 0 if before is None or after is None else (after - before) // _ONE_SECOND
    return float(_first_change(zone, t - shift, t))


def _subday_bounds(window: Window, now: float) -> tuple[float, float, bool]:
    """Start, end, and whether the window was cut short by an offset change at its start."""
    zone = _zone(window.tz)
    unit = _SUBDAY_SECONDS[window.kind]
    off = _offset(zone, now)
    aligned = math.floor((now + off) / unit) * unit - off
    start, cut = aligned, False
    if _offset(zone, aligned) != off:
        start, cut = _first_change(zone, aligned, now), True
    end = aligned + unit
    if _offset(zone, end - 1) != off:
        end = _first_change(zone, now, end - 1)
    return float(start), float(end), cut


def _period(kind: str, day: date) -> tuple[date, date]:
    """First local date of the day/week/month containing ``day``, and of the next one."""
    if kind == "day":
        return day, day + timedelta(days=1)
    if kind == "week":
        monday = day - timedelta(days=day.weekday())
        return monday, monday + timedelta(days=7)
    first = day.replace(day=1)
    if first.month == 12:
        return first, date(first.year + 1, 1, 1)
    return first, first.replace(month=first.month + 1)


def _calendar_window(window: Window, now: float) -> tuple[date, float, float]:
    """First local date, start and end of the day/week/month window containing ``now``."""
    zone = _zone(window.tz)
    first, following = _period(window.kind, datetime.fromtimestamp(now, zone).date())
    start, end = _first_instant_of(zone, first), _first_instant_of(zone, following)
    if end <= now:
        # The clocks went back across midnight (St. John's until 2011, Casey in 2010): the
        # repeated wall time belongs to the date that had already begun, so keys never go
        # back to a window that has ended.
        first, following = _period(window.kind, following)
        start, end = end, _first_instant_of(zone, following)
    return first, start, end


def _rolling_buckets(window: Window, now: float) -> tuple[int, int]:
    """Index of the bucket written at ``now`` and of the oldest bucket still summed."""
    size = window.bucket_s
    length = window.length_s or 0
    return math.floor(now / size), math.floor((now - length) / size)


def _require_counter(window: Window) -> None:
    if window.kind == "request":
        raise ValueError("a per-request window has no counter, start, end or reset")


def window_bounds(window: Window, now: float) -> tuple[float, float]:
    """``(window_start, window_end)`` in one call."""
    _require_counter(window)
    if window.kind in _SUBDAY_SECONDS:
        start, end, _ = _subday_bounds(window, now)
        return start, end
    if window.kind == "run":  # as if this were the run's last call
        return now, now + (window.length_s or 0)
    if window.kind == "rolling":
        _, oldest = _rolling_buckets(window, now)
        size = window.bucket_s
        return float(oldest * size), float((oldest + 1) * size + (window.length_s or 0))
    _, start, end = _calendar_window(window, now)
    return start, end


def window_start(window: Window, now: float) -> float:
    """When the window containing ``now`` began.

    For a rolling window: the start of the oldest bucket still counted.
    """
    return window_bounds(window, now)[0]


def window_end(window: Window, now: float) -> float:
    """When the window containing ``now`` resets (the ``Retry-After`` target).

    For a rolling window: when its oldest counted bucket drops out of the sum, the first
    moment any capacity comes back.
    """
    return window_bounds(window, now)[1]


def _is_ambiguous(local: datetime) -> bool:
    return local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset()


def window_label(window: Window, now: float) -> str:
    """A compact id of the window containing ``now``, stable over the whole window."""
    _require_counter(window)
    if window.kind == "run":
        return "run"
    if window.kind == "rolling":
        current, _ = _rolling_buckets(window, now)
        return f"r{window.bucket_s}s{current}"
    zone = _zone(window.tz)
    if window.kind in _SUBDAY_SECONDS:
        start, _, cut = _subday_bounds(window, now)
        local = datetime.fromtimestamp(start, zone)
        label = local.strftime("%Y%m%dT%H" if window.kind == "hour" else "%Y%m%dT%H%M")
        if cut or _is_ambiguous(local):
            label += local.strftime("%z")
        return label
    first, _, _ = _calendar_window(window, now)
    if window.kind == "day":
        return first.strftime("%Y%m%d")
    if window.kind == "week":
        iso = first.isocalendar()
        return f"{iso.year}W{iso.week:02d}"
    return first.strftime("%Y%m")


def rolling_bucket_labels(window: Window, now: float) -> tuple[str, ...]:
    """Labels of the buckets summed for a rolling window: the one written at ``now`` first.

    A request counted in bucket ``b`` stays in the sum until the whole bucket is older than
    the window length, i.e. up to one bucket longer than the request itself. This is
    conservative on purpose: the sum can only over-count recent use, never under-count it,
    so a rolling limit can never be overshot.
    """
    if window.kind != "rolling":
        raise ValueError(f"a {window.kind!r} window has no buckets")
    current, oldest = _rolling_buckets(window, now)
    size = window.bucket_s
    return tuple(f"r{size}s{index}" for index in range(current, oldest - 1, -1))


def ttl_seconds(window: Window, now: float) -> int:
    """How long a counter written at ``now`` must live: until it stops counting, plus a margin.

    For a rolling window, the bucket written at ``now`` counts until it is older than the
    window length. A run's counter lives exactly its length past each call.
    """
    _require_counter(window)
    if window.kind == "run":
        return window.length_s or 1
    if window.kind == "rolling":
        current, _ = _rolling_buckets(window, now)
        until = float((current + 1) * window.bucket_s + (window.length_s or 0))
    else:
        until = window_end(window, now)
    return max(1, math.ceil(until - now)) + TTL_MARGIN_S


def describe_reset(window: Window, now: float) -> str:
    """When the window resets, for error messages: ``00:00 Europe/Berlin``,
    ``2026-12-01 00:00 UTC``, ``14:06 UTC``.

    The date is shown for week and month windows and whenever the reset is later than
    tomorrow; an ambiguous wall time (clocks falling back) also shows its UTC offset.
    """
    zone = _zone(window.tz)
    end = window_end(window, now)
    local = datetime.fromtimestamp(end, zone)
    text = local.strftime("%H:%M" if local.second == 0 else "%H:%M:%S")
    today = datetime.fromtimestamp(now, zone).date()
    if window.kind in ("week", "month") or local.date() > today + timedelta(days=1):
        text = f"{local:%Y-%m-%d} {text}"
    text = f"{text} {window.tz}"
    if _is_ambiguous(local):
        text += f" (UTC{local:%z})"
    return text
