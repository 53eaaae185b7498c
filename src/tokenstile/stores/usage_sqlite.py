"""Usage queries on SQLite: an hourly rollup kept by a trigger, read together with the ledger.

Why: the dashboard and the periodic alert rules aggregate a month of ledger rows many times
an hour, and scanning a million rows for each figure takes seconds. So every batch of
ledger rows, in the transaction that inserts it, is also added into ``usage_hourly``: one
row per UTC hour × organization × project × dimension value, for the total and for each of
the served model, user, feature and team, each tag (``team=search``) and each degradation
(``trimmed``). The batch is summed in Python first (a batch from one busy hour touches a
few hundred rollup rows, not seven per ledger row), and rows whose id is already in the
ledger are left out, so a retried batch (``INSERT OR IGNORE``) is never counted twice. A
provisional row (``LedgerRow.provisional``) replaced by its request's own row is taken out
of the rollup as the replacement goes in; a group left with no request is dropped.

Which hours of a query the rollup answers and which the ledger is ``usage_plan``'s call,
the same on PostgreSQL; either way the answer is exactly the ledger's.
A missing value (NULL in the ledger) is stored as ``''`` in the rollup and read back as
``None``; a value that really is the empty string is reported as ``None`` too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from tokenstile.stores.database import GROUPABLE, UsageQuery
from tokenstile.stores.sqlite import immediate
from tokenstile.stores.usage_plan import (
    HOUR,
    ROLLUP_DIMENSIONS,
    ROLLUP_KEYS,
    SLOT,
    aligned,
    combine,
    floor_hour,
    plan_usage,
    within,
)
from tokenstile.types import LedgerRow, one_per_id

LABELS = ("tag", "degraded")
TOTALS = ("requests", "input_tokens", "cached_input_tokens", "output_tokens",
          "reasoning_tokens", "cost_nano", "saved_nano", "blocked")
_MEASURES = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
             "cost_nano", "saved_nano")

# floor(ts / 3600) * 3600, exact even where the division rounds up across an hour boundary.
_HOUR_OF = ("((CAST({ts} / 3600 AS INTEGER) - (CAST({ts} / 3600 AS INTEGER) * 3600 > {ts}))"
            " * 3600)")
_SLOT_OF = ("((CAST({ts} / 900 AS INTEGER) - (CAST({ts} / 900 AS INTEGER) * 900 > {ts}))"
            " * 900)")
_SOURCES = [("''", "''", ""), *[(f"'{d}'", f"COALESCE({{row}}{d}, '')", "")
                                 for d in ROLLUP_DIMENSIONS],
            ("'tag'", "j.key || '=' || j.value", "json_each({row}tags) AS j"),
            ("'degraded'", "j.value", "json_each({row}degraded) AS j")]
_COLUMNS = ("hour, dim, organization, project, value, requests, input_tokens, "
            "cached_input_tokens, output_tokens, reasoning_tokens, cost_nano, saved_nano, "
            "blocked")

ROLLUP_TABLE = """
CREATE TABLE usage_hourly (
    dim TEXT NOT NULL, hour INTEGER NOT NULL, organization TEXT NOT NULL,
    project TEXT NOT NULL, value TEXT NOT NULL, requests INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
    cost_nano INTEGER NOT NULL, saved_nano INTEGER NOT NULL, blocked INTEGER NOT NULL,
    PRIMARY KEY (dim, hour, organization, project, value)
) WITHOUT ROWID
"""


_UPSERT = (f"INSERT INTO usage_hourly ({_COLUMNS}) VALUES ({', '.join('?' * 13)}) "
           "ON CONFLICT (dim, hour, organization, project, value) DO UPDATE SET "
           + ", ".join(f"{t} = {t} + excluded.{t}" for t in TOTALS))


def _rebuild_statements() -> list[str]:
    """One ``INSERT … SELECT … GROUP BY`` per dimension (cheaper than one big union)."""
    out = []
    sums = ", ".join(f"SUM(l.{m})" for m in _MEASURES)
    for dim, value, source in _SOURCES:
        src = source.format(row="l.")
        hour = _HOUR_OF.format(ts="l.ts")
        out.append(
            f"INSERT INTO usage_hourly ({_COLUMNS}) SELECT {hour} AS h, {dim}, "
            "COALESCE(l.organization, '') AS o, COALESCE(l.project, '') AS p, "
            f"{value.format(row='l.')} AS v, COUNT(*), {sums}, "
            "SUM(l.outcome = 'blocked') FROM ledger AS l" + (f", {src}" if src else "")
            + " GROUP BY h, o, p, v")
    return out


def ensure_rollup(conn: sqlite3.Connection) -> None:
    """Create the rollup, filled from the rows already in the ledger.

    Inside one write transaction, so two processes opening an old database at once
    cannot both fill it.
    """
    if _exists(conn):
        return
    with immediate(conn):
        if not _exists(conn):
            conn.execute(ROLLUP_TABLE)
            for statement in _rebuild_statements():
                conn.execute(statement)


def rebuild_rollup(conn: sqlite3.Connection) -> None:
    """Recompute the rollup from the ledger (after a bulk load that bypassed it)."""
    with immediate(conn):
        conn.execute("DELETE FROM usage_hourly")
        for statement in _rebuild_statements():
            conn.execute(statement)


def _exists(conn: sqlite3.Connection) -> bool:
    found = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                         "name = 'usage_hourly'").fetchone()
    return bool(found and found[0])


def new_rows(conn: sqlite3.Connection, rows: Sequence[LedgerRow]) -> list[LedgerRow]:
    """The rows of ``rows`` to insert: one of each id (``one_per_id``), and none whose id
    is already in the ledger. Call inside the write transaction."""
    first = {row.id: row for row in one_per_id(rows)}
    ids = list(first)
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for (known,) in conn.execute(f"SELECT id FROM ledger WHERE id IN ({marks})", chunk):
            first.pop(known, None)
    return list(first.values())


def _text(value: object) -> str:
    return "" if value is None else str(value)


def add_to_rollup(conn: sqlite3.Connection, rows: Sequence[LedgerRow]) -> None:
    """Add freshly inserted ledger rows into the rollup (inside their write transaction)."""
    conn.executemany(_UPSERT, [(hour, dim, org, project, value, *total)
                               for (dim, hour, org, project, value), total
                               in _sums(rows).items()])


def remove_from_rollup(conn: sqlite3.Connection, rows: Sequence[LedgerRow]) -> None:
    """Take ledger rows that were deleted (replaced) out of the rollup, in their write
    transaction; groups left with no request go, as the ledger has none for them."""
    sums = _sums(rows)
    conn.executemany(_UPSERT, [(hour, dim, org, project, value, *(-t for t in total))
                               for (dim, hour, org, project, value), total in sums.items()])
    conn.executemany("DELETE FROM usage_hourly WHERE dim = ? AND hour = ? AND organization = ? "
                     "AND project = ? AND value = ? AND requests <= 0", list(sums))


def _sums(rows: Sequence[LedgerRow]) -> dict[tuple[str, int, str, str, str], list[int]]:
    """The rollup's measures of ``rows``, per (dim, hour, organization, project, value)."""
    sums: dict[tuple[str, int, str, str, str], list[int]] = {}
    for row in rows:
        hour = floor_hour(row.ts)
        org, project = _text(row.organization), _text(row.project)
        measures = (1, row.input_tokens, row.cached_input_tokens, row.output_tokens,
                    row.reasoning_tokens, row.cost_nano, row.saved_nano,
                    int(row.outcome == "blocked"))
        keys = [("", ""), *((dim, _text(getattr(row, dim))) for dim in ROLLUP_DIMENSIONS),
                *(("tag", f"{k}={v}") for k, v in (row.tags or {}).items()),
                *(("degraded", _text(d)) for d in row.degraded or ())]
        for dim, value in keys:
            total = sums.get((dim, hour, org, project, value))
            if total is None:
                sums[(dim, hour, org, project, value)] = list(measures)
            else:
                for i, amount in enumerate(measures):
                    total[i] += amount
    return sums


# --- buckets ---------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def bucket_label(ts: float, kind: str, tz: str) -> str:
    local = datetime.fromtimestamp(ts, _zone(tz))
    if kind == "hour":
        return local.strftime("%Y-%m-%dT%H:00")
    if kind == "day":
        return local.strftime("%Y-%m-%d")
    return local.strftime("%Y-%m")


@lru_cache(maxsize=100_000)
def hour_bucket(hour: int, kind: str, tz: str) -> str:
    """``bucket_label`` of a rollup hour; few distinct hours, so cached."""
    return bucket_label(hour, kind, tz)


# --- queries ---------------------------------------------------------------------------------


def _names(query: UsageQuery, label: str | None) -> list[str]:
    return [*(["bucket"] if query.bucket else []), *query.group_by,
            *([label] if label else []), *TOTALS]


# --- local time in SQL -----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1)
_KEY_SECONDS = {"hour": HOUR, "day": 86400, "month": 86400}


def _offset(zone: ZoneInfo, t: int) -> int:
    offset = datetime.fromtimestamp(t, zone).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


@dataclass(frozen=True, slots=True)
class _Local:
    """A zone's offsets over a range as pieces (from, offset): local time becomes integer
    arithmetic SQLite can group by, with no Python call per row. A bucket key is local
    hours (or days, for day and month buckets) since 1970; ``label`` names it."""

    pieces: tuple[tuple[int, int], ...]

    @classmethod
    def over(cls, tz: str, lo: float, hi: float) -> _Local:
        zone = _zone(tz)
        t, end = int(lo // 1), int(hi // 1) + 1
        current = _offset(zone, t)
        pieces = [(t, current)]
        while t < end:
            step = min(t + 86400, end)
            if _offset(zone, step) == current:
                t = step
                continue
            a, b = t, step  # the offset changes in (a, b]: find the first second of the new one
            while b - a > 1:
                middle = (a + b) // 2
                a, b = (middle, b) if _offset(zone, middle) == current else (a, middle)
            current = _offset(zone, b)
            pieces.append((b, current))
            t = b
        return cls(tuple(pieces))

    def key(self, column: str, bucket: str) -> tuple[str, list[int]]:
        """SQL for the bucket key of ``column`` (UTC seconds on a quarter-hour boundary)."""
        args: list[int] = []
        if len(self.pieces) == 1:
            offset = "?"
            args.append(self.pieces[0][1])
        else:
            whens = []
            for (_, offset_before), (start, _) in zip(self.pieces, self.pieces[1:],
                                                      strict=False):
                whens.append(f"WHEN {column} < ? THEN ?")
                args.extend([start, offset_before])
            offset = f"CASE {' '.join(whens)} ELSE ? END"
            args.append(self.pieces[-1][1])
        return f"(({column} + {offset}) / {_KEY_SECONDS[bucket]})", args


@lru_cache(maxsize=100_000)
def _key_label(key: int, bucket: str) -> str:
    if bucket == "hour":
        return (_EPOCH + timedelta(hours=key)).strftime("%Y-%m-%dT%H:00")
    day = _EPOCH + timedelta(days=key)
    return day.strftime("%Y-%m-%d" if bucket == "day" else "%Y-%m")


# --- the two sources ---------------------------------------------------------------------------


Ranges = list[tuple[float | None, float | None]]


def _ledger_sql(query: UsageQuery, label: str | None, ranges: Ranges,
                local: _Local | None) -> tuple[str, list[Any]]:
    selects: list[str] = []
    groups: list[str] = []
    args: list[Any] = []
    if query.bucket and local is not None:
        key, key_args = local.key(_SLOT_OF.format(ts="ledger.ts"), query.bucket)
        selects.append(f"{key} AS bucket")
        args.extend(key_args)
        groups.append("bucket")
    elif query.bucket:  # a zone off the quarter hour: label row by row
        selects.append("ts_bucket(ledger.ts, ?, ?) AS bucket")
        args.extend([query.bucket, query.tz])
        groups.append("bucket")
    for name in query.group_by:
        if name not in GROUPABLE:  # validate() refused it already; never reach SQL
            raise ValueError(f"cannot group by {name!r}")
        selects.append(f"ledger.{name}")
        groups.append(f"ledger.{name}")
    source = "ledger"
    if label == "tag":
        source += ", json_each(ledger.tags) AS j"
        selects.append("j.key || '=' || j.value AS label")
        groups.append("label")
    elif label == "degraded":
        source += ", json_each(ledger.degraded) AS j"
        selects.append("j.value AS label")
        groups.append("label")
    clauses: list[str] = []
    for name, value in query.filters.items():
        if name not in GROUPABLE:
            raise ValueError(f"cannot filter by {name!r}")
        clauses.append(f"ledger.{name} = ?")
        args.append(value)

    def mark(value: float) -> str:
        args.append(value)
        return "?"

    clauses.append(within("ledger.ts", ranges, mark) or "1")
    totals = ("COUNT(*), " + ", ".join(f"SUM(ledger.{m})" for m in _MEASURES)
              + ", SUM(CASE WHEN ledger.outcome = 'blocked' THEN 1 ELSE 0 END)")
    sql = (f"SELECT {', '.join([*selects, totals])} FROM {source} "
           f"WHERE {' AND '.join(clauses)}")
    if groups:
        sql += f" GROUP BY {', '.join(groups)}"
    return sql, args


def _rollup_sql(query: UsageQuery, dim: str, label: str | None, since: int | None,
                until: int | None, local: _Local | None, skip: Sequence[int]
                ) -> tuple[str, list[Any]]:
    selects: list[str] = []
    groups: list[str] = []
    args: list[Any] = []
    if query.bucket and local is not None:
        key, key_args = local.key("hour", query.bucket)
        selects.append(f"{key} AS bucket")
        args.extend(key_args)
        groups.append("bucket")
    for name in [*query.group_by, *([label] if label else [])]:
        column = name if name in ROLLUP_KEYS else "value"
        selects.append(column)
        groups.append(column)
    clauses = ["dim = ?"]
    args.append(dim)
    for name, value in query.filters.items():
        clauses.append(f"{name if name in ROLLUP_KEYS else 'value'} = ?")
        args.append(value)
    if since is not None:
        clauses.append("hour >= ?")
        args.append(since)
    if until is not None:
        clauses.append("hour < ?")
        args.append(until)
    if skip:
        clauses.append(f"hour NOT IN ({','.join('?' * len(skip))})")
        args.extend(skip)
    totals = ", ".join(f"SUM({t})" for t in TOTALS)
    sql = (f"SELECT {', '.join([*selects, totals])} FROM usage_hourly "
           f"WHERE {' AND '.join(clauses)}")
    if groups:
        sql += f" GROUP BY {', '.join(groups)}"
    return sql, args


def _items(cursor: sqlite3.Cursor, names: Sequence[str], query: UsageQuery
           ) -> list[dict[str, Any]]:
    keys = len(names) - len(TOTALS)
    out = []
    for values in cursor:
        item = dict(zip(names, values, strict=True))
        if query.bucket and not isinstance(item["bucket"], str):
            item["bucket"] = _key_label(int(item["bucket"]), query.bucket)
        for name in names[keys:]:
            item[name] = item[name] or 0
        for name in names[:keys]:
            if item[name] == "":
                item[name] = None
        out.append(item)
    return out


def usage_from(conn: sqlite3.Connection, query: UsageQuery,
               label: str | None = None) -> list[dict[str, Any]]:
    """``Database.usage`` (and, with ``label``, ``usage_by_label``) on one connection."""
    names = _names(query, label)
    lo, hi = query.since, query.until
    local = None
    if query.bucket and aligned(query.tz, SLOT):
        span_lo, span_hi = lo, hi
        if span_lo is None or span_hi is None:
            # two queries: SQLite reads min() or max() alone from the index, both by a scan
            (oldest,) = conn.execute("SELECT min(ts) FROM ledger").fetchone()
            (newest,) = conn.execute("SELECT max(ts) FROM ledger").fetchone()
            if oldest is None:
                return []
            span_lo = oldest if span_lo is None else span_lo
            span_hi = newest + 1 if span_hi is None else span_hi
        local = _Local.over(query.tz, span_lo, span_hi)
    plan = plan_usage(query, label)
    if plan.needs_span and plan.dim is not None:
        plan = plan_usage(query, label, (_min_hour(conn, plan.dim), _max_hour(conn, plan.dim)))
    items = []
    if plan.dim is not None:
        items = _items(conn.execute(*_rollup_sql(query, plan.dim, label, plan.first, plan.last,
                                                 local, plan.skip)), names, query)
    if plan.ledger:
        items += _items(conn.execute(*_ledger_sql(query, label, list(plan.ledger), local)),
                        names, query)
    return combine(items, query, TOTALS)


def _min_hour(conn: sqlite3.Connection, dim: str) -> int:
    found = conn.execute("SELECT min(hour) FROM usage_hourly WHERE dim = ?", (dim,)).fetchone()
    return int(found[0]) if found and found[0] is not None else 0


def _max_hour(conn: sqlite3.Connection, dim: str) -> int:
    found = conn.execute("SELECT max(hour) FROM usage_hourly WHERE dim = ?", (dim,)).fetchone()
    return int(found[0]) if found and found[0] is not None else 0
