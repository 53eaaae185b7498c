"""Which part of a usage query the hourly rollup answers and which the ledger: one plan that
every database backend follows, so that they read the same rows.

The rollup holds one row per UTC hour × organization × project × dimension value (the
total, each of ``ROLLUP_DIMENSIONS``, each tag, each degradation). It answers a query
grouped and filtered by organization, project and at most one dimension (or one label)
over the whole hours of the query's range; the partial hours at either end come from the
ledger. Bucketed by local hour, day or month, each rollup hour must lie in one bucket: so it
is in zones whose offsets are whole hours. In zones a quarter or half hour off (India +5:30,
Nepal +5:45), a local day or month starts inside a UTC hour: those hours are read from the
ledger and the others from the rollup, while local hours there straddle two rollup hours,
so hour buckets are read from the ledger alone. Both sources give exactly the ledger's
answer; the rollup only makes it cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from tokenstile.stores.database import UsageQuery

HOUR = 3600
SLOT = 900  # every zone's offset is a multiple of a quarter hour (Nepal: +5:45)
ROLLUP_DIMENSIONS = ("served_model", "user", "feature", "team")
ROLLUP_KEYS = ("organization", "project")

Range = tuple[float | None, float | None]


def floor_hour(ts: float) -> int:
    hour = int(ts // HOUR) * HOUR  # then exact, whatever the float division rounded to
    while hour > ts:
        hour -= HOUR
    while hour + HOUR <= ts:
        hour += HOUR
    return hour


def ceil_hour(ts: float) -> int:
    hour = floor_hour(ts)
    return hour if hour == ts else hour + HOUR


@lru_cache(maxsize=64)
def aligned(tz: str, seconds: int = HOUR) -> bool:
    """True when the zone's offset from UTC was a whole number of ``seconds`` every week
    from 1980 to 2070 (no offset lasts less): then its local hours, days and months start
    on such a boundary."""
    zone = ZoneInfo(tz)
    day = datetime(1980, 1, 1, 12, tzinfo=UTC)
    end = datetime(2070, 1, 1, tzinfo=UTC)
    while day < end:
        offset = day.astimezone(zone).utcoffset()
        if offset is None or offset.total_seconds() % seconds:
            return False
        day += timedelta(days=7)
    return True


def rollup_dimension(query: UsageQuery, label: str | None = None) -> str | None:
    """The rollup dimension that answers ``query`` (``''`` for plain totals), or None when
    only the ledger can."""
    if query.bucket and not aligned(query.tz) and (
            query.bucket == "hour" or not aligned(query.tz, SLOT)):
        return None  # every local hour straddles two of the rollup's
    columns = {*query.group_by, *query.filters} - set(ROLLUP_KEYS)
    if label is not None:
        return None if columns else label
    if not columns:
        return ""
    (column,) = columns if len(columns) == 1 else (None,)
    return column if column in ROLLUP_DIMENSIONS else None


def boundary_hours(query: UsageQuery, first: int, last: int) -> list[int]:
    """Rollup hours in [first, last) that a local day or month of ``query`` starts inside of
    (none in a zone whose days start on the hour)."""
    zone = ZoneInfo(query.tz)
    out = []
    start: float = first
    while start < last:
        local = datetime.fromtimestamp(start, zone).date()
        if query.bucket == "month":
            following = date(local.year + local.month // 12, local.month % 12 + 1, 1)
        else:
            following = local + timedelta(days=1)
        start = datetime.combine(following, time(0), zone).timestamp()
        if start < last and start % HOUR:
            out.append(floor_hour(start))
    return out


@dataclass(frozen=True, slots=True)
class UsagePlan:
    """Rollup hours [``first``, ``last``) of dimension ``dim`` except ``skip``, plus the
    ``ledger`` ranges; with ``dim`` None, the ledger ranges alone. ``needs_span``: plan
    again with the rollup's first and last hour of ``dim`` (an open-ended range whose
    bucket boundaries must be found)."""

    dim: str | None
    first: int | None = None
    last: int | None = None
    skip: tuple[int, ...] = ()
    ledger: tuple[Range, ...] = ()
    needs_span: bool = False


def plan_usage(query: UsageQuery, label: str | None = None,
               span: tuple[int, int] | None = None) -> UsagePlan:
    """How to answer ``query`` (grouped by ``label`` too, if given). ``span`` is the first
    and last hour the rollup holds for the plan's dimension, when a first plan asked."""
    lo, hi = query.since, query.until
    dim = rollup_dimension(query, label)
    first = None if lo is None else ceil_hour(lo)
    last = None if hi is None else floor_hour(hi)
    if dim is None or (first is not None and last is not None and first >= last):
        return UsagePlan(None, ledger=((lo, hi),))
    skip: list[int] = []
    if query.bucket and not aligned(query.tz):
        if span is None and (first is None or last is None):
            return UsagePlan(dim, first, last, needs_span=True)
        oldest, newest = span or (0, 0)
        skip = boundary_hours(query, oldest if first is None else first,
                              newest + HOUR if last is None else last)
    ledger: list[Range] = [(h, h + HOUR) for h in skip]
    if lo is not None and first is not None and lo < first:
        ledger.append((lo, first))
    if hi is not None and last is not None and last < hi:
        ledger.append((last, hi))
    return UsagePlan(dim, first, last, tuple(skip), tuple(ledger))


def within(column: str, ranges: Sequence[Range], mark: Callable[[float], str]) -> str:
    """SQL: ``column`` inside any of ``ranges`` (either end may be open), each bound written
    as the placeholder ``mark`` returns (it keeps the value); '' when nothing is excluded."""
    if not ranges or any(since is None and until is None for since, until in ranges):
        return ""
    spans = []
    for since, until in ranges:
        bounds = []
        if since is not None:
            bounds.append(f"{column} >= {mark(since)}")
        if until is not None:
            bounds.append(f"{column} < {mark(until)}")
        spans.append(" AND ".join(bounds))
    return "(" + " OR ".join(f"({span})" for span in spans) + ")"


def combine(parts: Iterable[dict[str, Any]], query: UsageQuery,
            totals: Sequence[str]) -> list[dict[str, Any]]:
    """Partial answers (rows of group values then ``totals``) summed per group, empty
    groups dropped, ordered by bucket then cost (highest first), cut at the limit."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for item in parts:
        key = tuple(item.values())[:len(item) - len(totals)]
        seen = out.get(key)
        if seen is None:
            out[key] = item
        else:
            for name in totals:
                seen[name] += item[name]
    items = [item for item in out.values() if item["requests"]]
    items.sort(key=lambda i: (i["bucket"] if query.bucket else "", -i["cost_nano"]))
    return items[:query.limit]
