"""One Database suite, every backend: SQLite (a temporary file) and real PostgreSQL (a
database of this run's own, a schema per test: see conftest.py)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import openai
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import settled
from tokenstile.cli import main as cli
from tokenstile.stores.counters import StoreConfigError, StoreUnavailable
from tokenstile.stores.database import (
    Database,
    KeyRecord,
    LabelUsage,
    Override,
    UsageQuery,
    database_from_url,
)
from tokenstile.stores.db_postgres import PostgresDatabase
from tokenstile.stores.db_sqlite import SqliteDatabase
from tokenstile.stores.pg_migrations import LATEST, MIGRATIONS
from tokenstile.stores.responses import StoredResponse
from tokenstile.types import LedgerRow

TOTALS = ("requests", "input_tokens", "cached_input_tokens", "output_tokens",
          "reasoning_tokens", "cost_nano", "saved_nano", "blocked")


# --- fixtures --------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- sample data and an independent oracle ------------------------------------------------


def ts(text: str) -> float:
    """An ISO instant (with its offset) as epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


def sample_rows() -> list[LedgerRow]:
    """Rows around month ends and both DST changes of 2024, with distinct costs."""
    instants = [
        "2024-01-31T23:30:00+00:00", "2024-01-31T18:45:00+00:00", "2024-02-01T00:10:00+00:00",
        "2024-03-10T06:59:59+00:00", "2024-03-10T07:00:00+00:00", "2024-03-10T07:30:00+00:00",
        "2024-03-31T00:59:59+00:00", "2024-03-31T01:00:00+00:00", "2024-03-31T01:30:00+00:00",
        "2024-11-03T05:30:00+00:00", "2024-11-03T06:30:00+00:00", "2024-11-03T07:15:00+00:00",
        "2024-12-31T18:29:59.5+00:00", "2024-12-31T18:30:00+00:00", "2025-01-01T00:00:00+00:00",
    ]
    projects = ["alpha", "beta", None]
    users = ["alice", "bob", "carol", None]
    outcomes = ["ok", "ok", "blocked", "error", "ok"]
    rows = []
    for i, instant in enumerate(instants):
        outcome = outcomes[i % len(outcomes)]
        rows.append(LedgerRow(
            id=f"row-{i:03d}", ts=ts(instant), key_id=f"key_{i % 2}", organization="acme",
            project=projects[i % 3], team="core" if i % 2 else None, user=users[i % 4],
            end_user=f"eu-{i % 5}", feature=["chat", "search"][i % 2],
            tags={"env": "prod", "n": str(i)} if i % 3 else {},
            api="chat" if i % 4 else "embeddings",
            requested_model="gpt-4o", served_model="gpt-4o-mini" if i % 2 else "gpt-4o",
            upstream="openai", input_tokens=100 + i, cached_input_tokens=i,
            cache_write_tokens=i % 3, output_tokens=10 * i, reasoning_tokens=i % 4,
            cost_nano=1_000_003 * (i + 1) + i * i, estimated=i % 5 == 0,
            status={"ok": 200, "blocked": 429, "error": 502}[outcome], outcome=outcome,
            block_reason="budget:daily" if outcome == "blocked" else None,
            flags=["pii:email"] if i % 4 == 1 else [], latency_ms=12.5 + i, ttfb_ms=None
            if i % 3 == 0 else 3.25, streamed=i % 2 == 0, trace_id=f"tr-{i}",
            degraded=["trimmed"] if i == 7 else [], cache="hit" if i == 3 else None,
            saved_nano=5 if i == 3 else 0, detail={"attempts": i % 2 + 1, "why": "ok"}
            if i % 2 else {}, input_audio_tokens=i % 5, output_audio_tokens=2 * (i % 3),
            cache_write_1h_tokens=i % 3 // 2, web_search_requests=i % 4,
            file_search_calls=i % 2, service_tier=["default", "priority", None][i % 3],
        ))
    return rows


def bucket_of(value: float, kind: str, tz: str) -> str:
    local = datetime.fromtimestamp(value, ZoneInfo(tz))
    return local.strftime({"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}[kind])


def labels_of(row: LedgerRow, label: str | None) -> list[Any]:
    if label is None:
        return [None]
    if label == "tag":
        return [f"{k}={v}" for k, v in row.tags.items()]
    return list(row.degraded)


def oracle(rows: Sequence[LedgerRow], query: UsageQuery,
           label: str | None = None) -> list[dict[str, Any]]:
    """What ``usage`` (or ``usage_by_label``) must answer, computed in Python (before
    ordering and the limit)."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        if query.since is not None and row.ts < query.since:
            continue
        if query.until is not None and row.ts >= query.until:
            continue
        if any(str(getattr(row, k)) != str(v) for k, v in query.filters.items()):
            continue
        for value in labels_of(row, label):
            add(groups, row, query, label, value)
    return list(groups.values())


def add(groups: dict[tuple[Any, ...], dict[str, Any]], row: LedgerRow, query: UsageQuery,
        label: str | None, value: Any) -> None:
    names = [*(["bucket"] if query.bucket else []), *query.group_by,
             *([label] if label else [])]
    key: tuple[Any, ...] = (
        *([bucket_of(row.ts, query.bucket, query.tz)] if query.bucket else []),
        *(getattr(row, g) for g in query.group_by), *([value] if label else []))
    item = groups.setdefault(key, {**dict(zip(names, key, strict=True)),
                                   **dict.fromkeys(TOTALS, 0)})
    item["requests"] += 1
    for name in TOTALS[1:-1]:
        item[name] += getattr(row, name)
    item["blocked"] += row.outcome == "blocked"


def unordered(items: list[dict[str, Any]]) -> list[tuple[tuple[str, str], ...]]:
    return sorted(tuple(sorted((k, repr(v)) for k, v in item.items())) for item in items)


def assert_usage_order(items: list[dict[str, Any]], bucketed: bool) -> None:
    keys = [((item["bucket"] if bucketed else ""), -item["cost_nano"]) for item in items]
    assert keys == sorted(keys)


# --- ledger ----------------------------------------------------------------------------------


async def test_ledger_rows_round_trip_exactly(db: Database) -> None:
    rows = sample_rows()
    await db.insert_ledger(rows)
    back = await db.ledger_rows(limit=100)
    assert back == sorted(rows, key=lambda r: (r.ts, r.id), reverse=True)
    assert all(isinstance(r.ts, float) and isinstance(r.cost_nano, int) for r in back)
    assert all(isinstance(r.estimated, bool) and isinstance(r.streamed, bool) for r in back)


async def test_usage_can_be_grouped_by_service_tier(db: Database) -> None:
    rows = sample_rows()
    await db.insert_ledger(rows)
    got = {r["service_tier"]: (r["requests"], r["cost_nano"])
           for r in await db.usage(UsageQuery(group_by=["service_tier"]))}
    want: dict[Any, tuple[int, int]] = {}
    for row in rows:
        n, cost = want.get(row.service_tier, (0, 0))
        want[row.service_tier] = (n + 1, cost + row.cost_nano)
    assert got == want
    only = await db.ledger_rows(limit=100, service_tier="priority")
    assert {r.id for r in only} == {r.id for r in rows if r.service_tier == "priority"}


async def test_runs_are_listed_per_key_and_run_the_latest_first(db: Database) -> None:
    def row(n: int, key: str, run: str | None, ts: float, **fields: Any) -> LedgerRow:
        return LedgerRow(id=f"run-row-{n}", ts=ts, key_id=key, organization="acme",
                         project="agents", run_id=run, input_tokens=10, output_tokens=5,
                         cost_nano=100 * n, **fields)

    await db.insert_ledger([
        row(1, "key_a", "r1", 10.0), row(2, "key_a", "r1", 20.0),
        row(3, "key_a", "r1", 30.0, outcome="blocked", status=429),
        row(4, "key_b", "r1", 25.0), row(5, "key_a", "r2", 40.0), row(6, "key_a", None, 50.0),
    ])
    runs = await db.runs()
    assert [(r["key_id"], r["run_id"]) for r in runs] == [
        ("key_a", "r2"), ("key_a", "r1"), ("key_b", "r1")]
    first = runs[1]
    assert (first["requests"], first["blocked"], first["cost_nano"]) == (3, 1, 600)
    assert (first["input_tokens"], first["output_tokens"]) == (30, 15)
    assert (first["first_ts"], first["last_ts"], first["project"]) == (10.0, 30.0, "agents")
    assert [r["run_id"] for r in await db.runs(since=35.0)] == ["r2"]
    assert [r["key_id"] for r in await db.runs(filters={"key_id": "key_b"})] == ["key_b"]
    assert len(await db.runs(limit=1)) == 1
    with pytest.raises(ValueError):
        await db.runs(filters={"cost_nano": "1"})
    assert (await db.ledger_rows(id="run-row-5"))[0].run_id == "r2"


# The ledger as the first release made it, before audio, 1-hour cache writes, searches and
# the service tier had columns.
_FIRST_LEDGER = """
CREATE TABLE ledger (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, key_id TEXT, organization TEXT, project TEXT,
    team TEXT, user TEXT, end_user TEXT, feature TEXT, tags TEXT, api TEXT,
    requested_model TEXT, served_model TEXT, upstream TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0, cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0, cost_nano INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0, status INTEGER NOT NULL, outcome TEXT NOT NULL,
    block_reason TEXT, flags TEXT, latency_ms REAL, ttfb_ms REAL,
    streamed INTEGER NOT NULL DEFAULT 0, trace_id TEXT, degraded TEXT, cache TEXT,
    saved_nano INTEGER NOT NULL DEFAULT 0, detail TEXT
);
INSERT INTO ledger (id, ts, input_tokens, cost_nano, status, outcome)
    VALUES ('old-row', 1.0, 10, 25, 200, 'ok');
"""


async def test_a_sqlite_ledger_from_before_the_new_columns_gains_them(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_FIRST_LEDGER)
    db = SqliteDatabase(f"sqlite:///{path}")
    await db.open()
    try:
        new = LedgerRow(id="new-row", ts=2.0, input_tokens=5, input_audio_tokens=3,
                        output_audio_tokens=1, cache_write_1h_tokens=2, web_search_requests=4,
                        file_search_calls=1, service_tier="flex", cost_nano=7)
        await db.insert_ledger([new])
        old, = await db.ledger_rows(id="old-row")
        assert (old.input_tokens, old.cost_nano, old.input_audio_tokens,
                old.service_tier) == (10, 25, 0, None)
        assert await db.ledger_rows(id="new-row") == [new]
        assert (await db.usage(UsageQuery()))[0]["cost_nano"] == 32
    finally:
        await db.close()
    again = SqliteDatabase(f"sqlite:///{path}")  # opening again changes nothing
    await again.open()
    assert len(await again.ledger_rows()) == 2
    await again.close()


async def test_a_postgres_ledger_at_schema_3_gains_the_new_columns(pg_url: str) -> None:
    pg = PostgresDatabase(pg_url)
    await pg.open()
    async with pg.connection() as conn:
        await conn.execute("ALTER TABLE ledger DROP COLUMN input_audio_tokens, "
                           "DROP COLUMN output_audio_tokens, DROP COLUMN cache_write_1h_tokens, "
                           "DROP COLUMN web_search_requests, DROP COLUMN file_search_calls, "
                           "DROP COLUMN service_tier")
        await conn.execute("DELETE FROM tokenstile_schema_version WHERE version >= 4")
        await conn.execute("INSERT INTO ledger (id, ts, input_tokens, status, outcome) "
                           "VALUES ('old-row', 1.0, 10, 200, 'ok')")
    await pg.close()
    again = PostgresDatabase(pg_url)
    await again.open()
    try:
        assert await again.schema_version() == LATEST
        new = LedgerRow(id="new-row", ts=2.0, input_audio_tokens=3, service_tier="priority",
                        web_search_requests=2)
        await again.insert_ledger([new])
        old, = await again.ledger_rows(id="old-row")
        assert (old.input_tokens, old.input_audio_tokens, old.service_tier) == (10, 0, None)
        assert await again.ledger_rows(id="new-row") == [new]
    finally:
        await again.close()


async def test_insert_is_idempotent_on_id(db: Database) -> None:
    rows = sample_rows()
    await db.insert_ledger(rows[:10])
    changed = LedgerRow(id=rows[0].id, ts=rows[0].ts, cost_nano=999_999_999_999)
    await db.insert_ledger([*rows[5:], changed, rows[6]])  # a retried, overlapping batch
    back = await db.ledger_rows(limit=100)
    assert len(back) == len(rows) == len({r.id for r in back})
    first = next(r for r in back if r.id == rows[0].id)
    assert first == rows[0]  # the first write wins: a retry never re-bills
    total = await db.usage(UsageQuery())
    assert total[0]["cost_nano"] == sum(r.cost_nano for r in rows)
    await db.insert_ledger([])


def provisional(row: LedgerRow, n: int) -> LedgerRow:
    """The row crash recovery writes for ``row``'s request: at its reservation's estimate,
    and attributed as the request looked when it was admitted (another model, no tags)."""
    return replace(row, outcome="unsettled", estimated=True, status=0,
                   input_tokens=5_000 + n, output_tokens=4_096, reasoning_tokens=0,
                   cached_input_tokens=0, cost_nano=777_000_000 + n, served_model="gpt-est",
                   user="est-user", tags={"est": str(n)}, degraded=["estimate"],
                   flags=["charged_at_estimate"], saved_nano=0)


async def test_a_final_row_replaces_a_provisional_one_whichever_comes_first(
        db: Database) -> None:
    rows = sample_rows()
    est = {i: provisional(rows[i], i) for i in range(15)}
    batches: list[list[LedgerRow]] = [
        [est[0], est[1], est[2], est[3], est[9]],       # crash recovery first
        [rows[i] for i in range(15) if i not in (2, 3, 4, 5, 6)],
        [est[4], rows[4]],                              # both in one batch, either order
        [rows[5], est[5]],
        [rows[6]],                                      # the final row first …
        [est[6], est[7], est[8]],                       # … then the estimate: kept out
        [est[2], rows[2], rows[3], est[3]],             # retried batches change nothing
        [rows[0], est[0]],
    ]
    for batch in batches:
        await db.insert_ledger(batch)
    back = {r.id: r for r in await db.ledger_rows(limit=100)}
    assert back == {r.id: r for r in rows}
    for query in (UsageQuery(), UsageQuery(group_by=["served_model"]),
                  UsageQuery(group_by=["user"], filters={"project": "alpha"}),
                  UsageQuery(bucket="hour", tz="America/New_York"),
                  UsageQuery(bucket="day", tz="UTC", group_by=["team"])):
        assert unordered(await db.usage(query)) == unordered(oracle(rows, query)), query
    for label in ("tag", "degraded"):
        query = UsageQuery(group_by=["project"])
        assert unordered(await db.usage_by_label(query, label)) == \
            unordered(oracle(rows, query, label))
    # A provisional row stays until its final row comes; a retried one is kept once.
    alone = provisional(LedgerRow(id="crashed", ts=rows[0].ts, organization="acme"), 99)
    await db.insert_ledger([alone])
    await db.insert_ledger([alone])
    assert await db.ledger_rows(id="crashed") == [alone]
    assert unordered(await db.usage(UsageQuery())) == unordered(
        oracle([*rows, alone], UsageQuery()))


async def test_ledger_rows_filters(db: Database) -> None:
    rows = sample_rows()
    await db.insert_ledger(rows)

    async def ids(limit: int = 100, **filters: Any) -> list[str]:
        return [r.id for r in await db.ledger_rows(limit=limit, **filters)]

    newest_first = [r.id for r in sorted(rows, key=lambda r: (r.ts, r.id), reverse=True)]
    assert await ids() == newest_first
    assert await ids(limit=3) == newest_first[:3]
    assert await ids(project="alpha") == [i for i in newest_first
                                          if rows[int(i[-3:])].project == "alpha"]
    assert await ids(user="bob", feature="search") == [
        i for i in newest_first if rows[int(i[-3:])].user == "bob"
        and rows[int(i[-3:])].feature == "search"]
    since, until = ts("2024-03-10T07:00:00+00:00"), ts("2024-03-31T01:00:00+00:00")
    assert await ids(since=since, until=until) == [
        i for i in newest_first if since <= rows[int(i[-3:])].ts < until]
    assert await ids(project=None, since=None) == newest_first  # None means no filter
    flagged = [i for i in newest_first
               if rows[int(i[-3:])].outcome != "ok" or rows[int(i[-3:])].flags]
    assert await ids(flagged=True) == flagged
    assert await ids(policy="budget") == [i for i in newest_first
                                          if rows[int(i[-3:])].block_reason]
    assert await ids(policy="PII:E") == [i for i in newest_first if rows[int(i[-3:])].flags]
    assert await ids(status="429") == await ids(status=429) == await ids(outcome="blocked")
    assert await ids(status="abc") == []
    assert await ids(project="x' OR '1'='1") == []
    hostile: dict[str, Any] = {"project; DROP TABLE ledger": "x"}
    with pytest.raises(ValueError, match="cannot filter"):
        await db.ledger_rows(100, **hostile)
    assert await ids(id="row-003") == ["row-003"]
    assert len(await db.ledger_rows(limit=100)) == len(rows)


async def test_ledger_rows_break_ts_ties_by_id_bytewise(db: Database) -> None:
    same = 1_700_000_000.25
    ids = ["a-1", "B-2", "b-3", "_x", "é"]
    await db.insert_ledger([LedgerRow(id=i, ts=same) for i in ids])
    assert [r.id for r in await db.ledger_rows()] == sorted(ids, reverse=True)


# --- usage -----------------------------------------------------------------------------------


USAGE_CASES = [
    UsageQuery(),
    UsageQuery(group_by=["project"]),
    UsageQuery(group_by=["project", "user"]),
    UsageQuery(group_by=["served_model", "outcome", "status"]),
    UsageQuery(group_by=["user"], filters={"project": "alpha"}),
    UsageQuery(bucket="hour", tz="America/New_York"),
    UsageQuery(bucket="day", tz="America/New_York", group_by=["feature"]),
    UsageQuery(bucket="day", tz="Asia/Kolkata"),
    UsageQuery(bucket="month", tz="Asia/Kolkata", group_by=["api"]),
    UsageQuery(bucket="hour", tz="Europe/Berlin", since=ts("2024-03-31T00:00:00+00:00"),
               until=ts("2024-04-01T00:00:00+00:00")),
    UsageQuery(bucket="month", tz="Pacific/Chatham", group_by=["team", "key_id"]),
    UsageQuery(bucket="day", tz="UTC", filters={"outcome": "blocked", "status": "429"}),
    UsageQuery(since=ts("2030-01-01T00:00:00+00:00")),
]


@pytest.mark.parametrize("query", USAGE_CASES, ids=lambda q: f"{q.bucket}-{q.tz}-"
                         f"{'+'.join(q.group_by)}-{'+'.join(q.filters)}")
async def test_usage_matches_the_oracle(db: Database, query: UsageQuery) -> None:
    rows = sample_rows()
    await db.insert_ledger(rows)
    got = await db.usage(query)
    assert unordered(got) == unordered(oracle(rows, query))
    assert_usage_order(got, bool(query.bucket))
    for item in got:
        assert all(type(item[name]) is int for name in TOTALS)


LABEL_CASES = [
    UsageQuery(),
    UsageQuery(group_by=["project"]),
    UsageQuery(bucket="day", tz="Asia/Kolkata", group_by=["feature"]),
    UsageQuery(bucket="month", tz="America/New_York", filters={"project": "alpha"}),
    UsageQuery(since=ts("2024-03-10T07:00:00+00:00"), until=ts("2024-11-03T06:30:00+00:00")),
]


@pytest.mark.parametrize("label", ["tag", "degraded"])
@pytest.mark.parametrize("query", LABEL_CASES, ids=lambda q: f"{q.bucket}-{q.tz}-"
                         f"{'+'.join(q.group_by)}-{'+'.join(q.filters)}")
async def test_usage_by_label_matches_the_oracle(db: Database, query: UsageQuery,
                                                 label: str) -> None:
    rows = sample_rows()
    rows[4].degraded = ["trimmed", "fallback"]
    rows[9].tags = {"env": "dev", "team": "search"}
    await db.insert_ledger(rows)
    assert isinstance(db, LabelUsage)
    got = await db.usage_by_label(query, label)
    assert unordered(got) == unordered(oracle(rows, query, label))
    assert_usage_order(got, bool(query.bucket))
    with pytest.raises(ValueError, match="label"):
        await db.usage_by_label(query, "tags; DROP TABLE ledger")


async def test_usage_limit_and_types(db: Database) -> None:
    rows = sample_rows()
    await db.insert_ledger(rows)
    query = UsageQuery(group_by=["end_user"], limit=2)
    got = await db.usage(query)
    expected = sorted(oracle(rows, query), key=lambda i: -i["cost_nano"])[:2]
    assert got == expected
    assert await db.usage(UsageQuery(group_by=["project"], filters={"project": "nobody"})) == []


async def test_usage_refuses_unknown_columns_before_sql(db: Database) -> None:
    await db.insert_ledger(sample_rows())
    for bad in (UsageQuery(group_by=["project; DROP TABLE ledger"]),
                UsageQuery(group_by=["cost_nano"]),
                UsageQuery(filters={"1=1 OR project": "x"}),
                UsageQuery(bucket="week")):
        with pytest.raises(ValueError):
            await db.usage(bad)
    assert len(await db.ledger_rows(limit=100)) == len(sample_rows())


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
async def test_buckets_at_dst_edges(db: Database, tz: str) -> None:
    """Every second-boundary around both 2024 DST changes lands in the same bucket on
    every backend as in Python's zoneinfo."""
    rows = []
    for n, start in enumerate(("2024-03-10T06:00:00+00:00", "2024-11-03T05:00:00+00:00",
                               "2024-04-06T14:00:00+00:00", "2024-10-05T15:00:00+00:00")):
        base = ts(start)
        for k in range(0, 3 * 3600, 900):
            for delta in (-1.0, -0.25, 0.0, 0.5):
                rows.append(LedgerRow(id=f"{n}-{k}-{delta}", ts=base + k + delta, cost_nano=1))
    await db.insert_ledger(rows)
    query = UsageQuery(bucket="hour", tz=tz, limit=10_000)
    got = await db.usage(query)
    assert unordered(got) == unordered(oracle(rows, query))


# --- backends agree on random data -------------------------------------------------------

ROW_STRATEGY: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    ts=st.floats(min_value=ts("2024-01-01T00:00:00+00:00"),
                 max_value=ts("2025-01-01T00:00:00+00:00"), allow_nan=False),
    project=st.sampled_from(["a", "b", "B", None]),
    user=st.sampled_from(["u1", "u2", None]),
    outcome=st.sampled_from(["ok", "blocked", "error"]),
    input_tokens=st.integers(0, 10**9),
    output_tokens=st.integers(0, 10**6),
    cost_nano=st.integers(0, 10**15),
)


def test_backends_agree_on_random_ledgers(tmp_path: Path, pg_url: str) -> None:
    loop = asyncio.new_event_loop()
    sqlite = SqliteDatabase(f"sqlite:///{tmp_path}/agree.db")
    pg = PostgresDatabase(pg_url)

    async def gather(*coros: Any) -> list[Any]:
        return list(await asyncio.gather(*coros))

    loop.run_until_complete(gather(sqlite.open(), pg.open()))

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(specs=st.lists(ROW_STRATEGY, max_size=25),
           group_by=st.lists(st.sampled_from(["project", "user", "outcome"]), unique=True,
                             max_size=2),
           bucket=st.sampled_from([None, "hour", "day", "month"]),
           tz=st.sampled_from(["UTC", "America/Los_Angeles", "Asia/Kathmandu",
                               "Europe/London"]),
           since=st.none() | st.floats(ts("2024-01-01T00:00:00+00:00"),
                                       ts("2025-01-01T00:00:00+00:00")))
    # A call less than a microsecond before midnight: the same hour and day everywhere.
    @example(specs=[{"ts": ts("2025-01-01T00:00:00+00:00") - 3e-7}], group_by=[],
             bucket="hour", tz="UTC", since=None)
    def check(specs: list[dict[str, Any]], group_by: list[str], bucket: str | None, tz: str,
              since: float | None) -> None:
        org = uuid.uuid4().hex
        rows = [LedgerRow(id=f"{org}-{i}", organization=org, **spec)
                for i, spec in enumerate(specs)]
        query = UsageQuery(group_by=group_by, bucket=bucket, tz=tz, since=since,
                           filters={"organization": org}, limit=10_000)

        async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            await asyncio.gather(sqlite.insert_ledger(rows), pg.insert_ledger(rows))
            one, two = await asyncio.gather(sqlite.usage(query), pg.usage(query))
            return one, two

        from_sqlite, from_pg = loop.run_until_complete(both())
        assert unordered(from_pg) == unordered(from_sqlite) == unordered(oracle(rows, query))

    try:
        check()
    finally:
        loop.run_until_complete(gather(sqlite.close(), pg.close()))
        loop.close()


# --- keys ------------------------------------------------------------------------------------


def key(n: int, **fields: Any) -> KeyRecord:
    return KeyRecord(id=f"key_{n:04d}", hash=f"hash-{n}", prefix=f"ts-{n:04d}",
                     created_at=1000.0 + n, **fields)


async def test_keys_crud(db: Database) -> None:
    full = key(1, name="ci bot", organization="acme", project="p", team="t", user="alice",
               tier="premium", feature="chat", allowed_models=["gpt-4o*", "claude-*"],
               passthrough=True, limits={"tokens_per_day": 1000, "nested": {"a": [1, 2]}},
               expires_at=5000.0)
    bare = key(2)
    await db.create_key(bare)
    await db.create_key(full)
    assert await db.key_by_hash("hash-1") == full
    assert await db.key_by_id("key_0002") == bare
    assert await db.key_by_hash("nope") is None and await db.key_by_id("nope") is None
    assert [k.id for k in await db.list_keys()] == ["key_0001", "key_0002"]

    revoked = await db.update_key("key_0002", revoked_at=2000.5, name="old")
    assert revoked is not None and revoked.revoked_at == 2000.5 and revoked.name == "old"
    assert not revoked.active(now=3000.0)
    assert [k.id for k in await db.list_keys()] == ["key_0001"]
    assert [k.id for k in await db.list_keys(include_revoked=True)] == ["key_0001", "key_0002"]

    rotated = await db.update_key("key_0001", hash="hash-new", prefix="ts-new")
    assert rotated is not None and rotated.prefix == "ts-new"
    assert await db.key_by_hash("hash-1") is None
    assert await db.key_by_hash("hash-new") == rotated

    changed = await db.update_key("key_0001", limits={"x": 1}, allowed_models=None,
                                  passthrough=False, tier=None, feature="search")
    assert changed is not None
    assert (changed.limits, changed.allowed_models, changed.passthrough, changed.tier,
            changed.feature) == ({"x": 1}, None, False, None, "search")
    assert await db.update_key("key_0001") == changed
    assert await db.update_key("missing", name="x") is None
    with pytest.raises(ValueError, match="cannot change"):
        await db.update_key("key_0001", organization="evil")
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own kind
        await db.create_key(key(3, hash="hash-new"))  # hashes are unique
    with pytest.raises(Exception):  # noqa: B017
        await db.create_key(key(1))


async def test_key_listing_filters_and_limits(db: Database) -> None:
    await db.create_key(key(1, project="p", user="alice", limits={"rpm": 10}))
    await db.create_key(key(2, project="p", user="bob", limits={}))
    await db.create_key(key(3, project="q", user="alice", limits={"tpd": 5}))
    await db.create_key(key(4, project="p", user="alice", limits={"rpm": 1}))
    await db.update_key("key_0004", revoked_at=1.0)
    assert [k.id for k in await db.list_keys(filters={"project": "p"})] == ["key_0001",
                                                                            "key_0002"]
    assert [k.id for k in await db.list_keys(True, {"project": "p", "user": "alice"})] == [
        "key_0001", "key_0004"]
    assert await db.list_keys(filters={"user": "x' OR '1'='1"}) == []
    with pytest.raises(ValueError, match="cannot filter keys"):
        await db.list_keys(filters={"hash": "x"})
    assert await db.key_limits() == [("key_0001", {"rpm": 10}), ("key_0003", {"tpd": 5})]


async def test_key_public_view_has_no_secret_material(db: Database) -> None:
    await db.create_key(key(7, name="n"))
    record = await db.key_by_id("key_0007")
    assert record is not None
    public = record.public()
    assert "hash" not in public and public["prefix"] == "ts-0007" and public["limits"] == {}


# --- overrides -------------------------------------------------------------------------------


async def test_overrides_crud(db: Database) -> None:
    assert await db.list_overrides() == []
    one = Override("switch", "feature:chat", {"enabled": False, "reason": "incident"}, 10.0,
                   "ops")
    two = Override("limit", "daily-tokens", {"amount": 5000}, 11.0)
    three = Override("switch", "Project:B", {"enabled": False}, 12.0, "cli")
    for item in (one, two, three):
        await db.set_override(item)
    assert await db.list_overrides() == [two, three, one]  # by kind, then target, bytewise
    replaced = Override("switch", "feature:chat", {"enabled": True}, 20.0, "ops2")
    await db.set_override(replaced)
    assert await db.list_overrides() == [two, three, replaced]
    assert await db.delete_override("switch", "feature:chat") is True
    assert await db.delete_override("switch", "feature:chat") is False
    assert await db.list_overrides() == [two, three]


async def test_responses_are_adopted_renewed_and_settled_once(db: Database) -> None:
    """Background responses: whoever moves one from pending to settled bills it, once;
    a gateway's entries go to another when its lease ends or it lets them go."""
    record = {"row": {"id": "req_1", "ts": 5.0}, "ticket": None}
    pending = StoredResponse("resp_1", "openai", "org", "p", "key_1", 10.0, "pending",
                             "req_1", record, "gw_a", 100.0)
    stored = StoredResponse("resp_2", "openai", "org", "p", None, 11.0)
    await db.save_responses([pending, stored])
    await db.save_responses([StoredResponse("resp_1", "other", None, None, None, 0.0)])
    got = await db.get_response("resp_1")
    assert got == pending  # a known id is left as it is; the record round-trips
    assert await db.response_by_rid("req_1") == pending
    assert await db.response_by_rid("req_9") is None
    assert await db.get_response("resp_9") is None
    assert await db.adopt_responses("gw_b", now=50.0, lease_until=150.0) == []
    assert await db.renew_responses("gw_a", ["resp_1", "resp_2"], 200.0) == ["resp_1"]
    assert await db.renew_responses("gw_b", ["resp_1"], 300.0) == []
    [adopted] = await db.adopt_responses("gw_b", now=250.0, lease_until=400.0)
    assert (adopted.id, adopted.owner, adopted.lease_until) == ("resp_1", "gw_b", 400.0)
    assert await db.renew_responses("gw_a", ["resp_1"], 500.0) == []  # no longer its own
    await db.release_responses("gw_b")
    [again] = await db.adopt_responses("gw_a", now=1.0, lease_until=60.0)
    assert again.owner == "gw_a"
    results = await asyncio.gather(*(db.settle_response("resp_1") for _ in range(5)))
    assert results.count(True) == 1
    assert not await db.settle_response("resp_2")  # never pending
    assert (await db.get_response("resp_1")).state == "settled"  # type: ignore[union-attr]
    assert await db.adopt_responses("gw_b", now=10_000.0, lease_until=20_000.0) == []
    late = StoredResponse("resp_3", "openai", "org", "p", None, 12.0, "pending", "req_3",
                          record, "gw_a", 100.0)
    await db.save_responses([late])
    late.state = "settled"  # settled while its save was in doubt, then saved again
    await db.save_responses([late])
    assert (await db.get_response("resp_3")).state == "settled"  # type: ignore[union-attr]
    await db.save_responses([StoredResponse("resp_2", "x", None, None, None, 0.0, "settled")])
    assert (await db.get_response("resp_2")).state == "stored"  # type: ignore[union-attr]
    assert await db.prune_responses(before=10.5) == 1
    assert await db.get_response("resp_1") is None
    assert await db.get_response("resp_2") is not None


# --- PostgreSQL only: migrations, outages, hostile text ----------------------------------


async def _versions(url: str) -> list[int]:
    pg = PostgresDatabase(url)
    async with pg.connection() as conn:
        rows = await conn.fetch("SELECT version FROM tokenstile_schema_version ORDER BY 1")
    await pg.close()
    return [r["version"] for r in rows]


async def test_migrations_are_idempotent(pg_url: str) -> None:
    for _ in range(3):
        pg = PostgresDatabase(pg_url)
        await pg.open()
        assert await pg.schema_version() == LATEST
        assert await pg.migrate() == LATEST
        await pg.close()
    assert await _versions(pg_url) == [m.version for m in MIGRATIONS]


async def test_migrations_race_safely(pg_url: str) -> None:
    """Many gateways starting at once on an empty schema: one migrates, all open."""
    many = [PostgresDatabase(pg_url) for _ in range(6)]
    await asyncio.wait_for(asyncio.gather(*(pg.open() for pg in many)), 60)
    await asyncio.gather(*(pg.insert_ledger([LedgerRow(id=f"r{i}", ts=1.0)])
                           for i, pg in enumerate(many)))
    assert len(await many[0].ledger_rows()) == 6
    await asyncio.gather(*(pg.close() for pg in many))
    assert await _versions(pg_url) == [m.version for m in MIGRATIONS]


async def test_missing_steps_run_in_order(pg_url: str) -> None:
    pg = PostgresDatabase(pg_url)
    await pg.open()
    async with pg.connection() as conn:
        await conn.execute("DROP TABLE alerts, usage_hourly")
        await conn.execute("DROP FUNCTION tokenstile_usage_hourly() CASCADE")
        await conn.execute("DELETE FROM tokenstile_schema_version WHERE version >= 2")
    await pg.close()
    again = PostgresDatabase(pg_url)
    await again.open()
    async with again.connection() as conn:
        assert await conn.fetchval("SELECT to_regclass('alerts')::text") == "alerts"
        assert await conn.fetchval("SELECT to_regclass('usage_hourly')::text") is not None
    await again.close()
    assert await _versions(pg_url) == [m.version for m in MIGRATIONS]


async def test_rollup_stays_exact_under_concurrent_writers(pg_url: str) -> None:
    """Gateways writing overlapping hours, projects and tags at once, retrying each
    other's batches: the rollup neither deadlocks nor counts a row twice."""
    writers = [PostgresDatabase(pg_url) for _ in range(4)]
    await asyncio.gather(*(w.open() for w in writers))
    base = ts("2024-06-01T00:00:00+00:00")
    rows = [LedgerRow(id=f"c{i:05d}", ts=base + (i * 7919) % (6 * 3600), organization="o",
                      project=f"p{i % 3}", user=f"u{i % 4}", tags={"t": str(i % 2)},
                      cost_nano=i, input_tokens=1) for i in range(2000)]
    batches = [rows[i:i + 250] for i in range(0, len(rows), 250)]

    async def write(writer: PostgresDatabase, offset: int) -> None:
        for k in range(len(batches)):
            await writer.insert_ledger(batches[(k + offset) % len(batches)])

    await asyncio.wait_for(asyncio.gather(*(write(w, i * 2) for i, w in enumerate(writers))),
                           120)
    for query, label in ((UsageQuery(group_by=["project"], bucket="hour"), None),
                         (UsageQuery(group_by=["user"], filters={"organization": "o"}), None),
                         (UsageQuery(bucket="day", tz="America/Chicago"), "tag"),
                         (UsageQuery(since=base + 1800.5, until=base + 4 * 3600 + 7), None)):
        got = await (writers[0].usage_by_label(query, label) if label
                     else writers[0].usage(query))
        assert unordered(got) == unordered(oracle(rows, query, label))
    await asyncio.gather(*(w.close() for w in writers))


async def test_migrate_false_refuses_an_old_schema(pg_url: str) -> None:
    strict = PostgresDatabase(pg_url + "&migrate=false")
    with pytest.raises(StoreConfigError, match="tokenstile migrate"):
        await strict.open()
    assert await strict.migrate() == LATEST
    await strict.close()
    again = PostgresDatabase(pg_url + "&migrate=false")
    await again.open()
    await again.close()


def test_migrate_command(tmp_path: Path, pg_url: str) -> None:
    config = tmp_path / "tokenstile.yaml"
    config.write_text(f"storage:\n  database: \"{pg_url}\"\n  counters: memory://\n")
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(cli, ["migrate", "--config", str(config)])
        assert result.exit_code == 0, result.output
        assert f"schema version {LATEST}" in result.output
    result = runner.invoke(cli, ["migrate", "--database", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 0 and "schema up to date" in result.output
    down = f"postgresql://postgres:hunter2@127.0.0.1:{closed_port()}/x"
    result = runner.invoke(cli, ["migrate", "--database", down])
    assert result.exit_code == 1 and "unavailable" in result.output
    assert "hunter2" not in result.output


async def test_unreachable_server_fails_fast_with_store_unavailable() -> None:
    pg = PostgresDatabase(f"postgresql://postgres:secret-pw@127.0.0.1:{closed_port()}/test"
                          "?connect_timeout=1")
    started = time.monotonic()
    calls = [pg.open(), pg.insert_ledger([LedgerRow(id="x", ts=1.0)]), pg.ledger_rows(),
             pg.usage(UsageQuery()), pg.key_by_hash("h"), pg.list_overrides()]
    for call in calls:
        with pytest.raises(StoreUnavailable) as info:
            await call
        assert "secret-pw" not in str(info.value)
    assert time.monotonic() - started < 10
    await pg.close()


async def test_pool_recovers_after_connections_are_killed(pg_url: str) -> None:
    pg = PostgresDatabase(pg_url)
    await pg.open()
    await pg.insert_ledger([LedgerRow(id="before", ts=1.0)])
    admin = await asyncpg.connect(pg_url.split("?")[0])
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND application_name = 'tokenstile' AND pid <> "
            "pg_backend_pid()")
    finally:
        await admin.close()
    outcomes = []
    for _ in range(3):  # the first call may meet the dead connection; none may hang
        try:
            await pg.insert_ledger([LedgerRow(id="after", ts=2.0)])
            outcomes.append("ok")
            break
        except StoreUnavailable:
            outcomes.append("unavailable")
    assert outcomes[-1] == "ok"
    assert {r.id for r in await pg.ledger_rows()} == {"before", "after"}
    await pg.close()


async def test_nul_characters_do_not_poison_a_batch(db_url: str) -> None:
    """PostgreSQL text cannot hold NUL: it is replaced, and the rest of the row kept."""
    db = database_from_url(db_url)
    await db.open()
    row = LedgerRow(id="nul", ts=1.0, end_user="a\x00b", tags={"k\x00": "v\x00"},
                    flags=["x\x00"], detail={"text": "\\u0000 stays literal"})
    await db.insert_ledger([row, LedgerRow(id="fine", ts=2.0)])
    back = {r.id: r for r in await db.ledger_rows()}
    assert set(back) == {"nul", "fine"}
    got = back["nul"]
    assert got.detail == {"text": "\\u0000 stays literal"}
    if isinstance(db, PostgresDatabase):
        assert (got.end_user, got.tags, got.flags) == ("a\ufffdb", {"k\ufffd": "v\ufffd"},
                                                       ["x\ufffd"])
    else:
        assert got == row
    await db.close()


async def test_postgres_refusals_are_value_errors(pg_url: str) -> None:
    pg = PostgresDatabase(pg_url)
    with pytest.raises(ValueError):
        await pg.insert_ledger([LedgerRow(id="big", ts=1.0, cost_nano=2**70)])
    with pytest.raises(ValueError):
        await pg.insert_ledger([LedgerRow(id="null-outcome", ts=1.0,
                                          outcome=None)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        await pg.usage(UsageQuery(bucket="day", tz="Mars/Olympus"))
    assert await pg.ledger_rows() == []
    await pg.close()


# --- end to end ------------------------------------------------------------------------------


def test_gateway_writes_its_ledger_to_postgres(make_gateway: Any, pg_url: str) -> None:
    gateway = make_gateway({"storage": {"database": pg_url}})
    secret = gateway.key(project="scale", user="pat")
    client = openai.OpenAI(base_url=gateway.v1, api_key=secret, max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}], max_tokens=5)
    client.close()
    assert reply.usage is not None
    [row] = gateway.rows()
    assert (row.project, row.user, row.outcome) == ("scale", "pat", "ok")
    assert row.output_tokens == reply.usage.completion_tokens
    assert row.input_tokens == reply.usage.prompt_tokens and row.cost_nano > 0

    async def direct() -> list[asyncpg.Record]:
        base, _, query = pg_url.partition("?")
        schema = query.split("=", 1)[1]
        conn = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            return list(await conn.fetch('SELECT id, project, "user", output_tokens, '
                                         "cost_nano FROM ledger"))
        finally:
            await conn.close()

    [stored] = asyncio.run(direct())
    assert (stored["id"], stored["project"], stored["user"]) == (row.id, "scale", "pat")
    assert (stored["output_tokens"], stored["cost_nano"]) == (row.output_tokens,
                                                               row.cost_nano)


def test_a_lease_claimed_by_another_gateway_bills_the_real_usage_once(
        make_gateway: Any, fake: Any, db_url: str, tmp_path: Path) -> None:
    """Gateway A serves a request past its reservation's lease (A's clock stands still, as if
    it could not renew); gateway B claims the reservation and writes its row at the
    estimate first. A's own row replaces it, and the counters end at what was used."""
    from tokenstile.clock import FakeClock
    from tokenstile.limits.counter_keys import counter_key

    config = {"storage": {"counters": f"sqlite:///{tmp_path}/counters.db", "database": db_url},
              "server": {"reservation_lease_s": 30},
              "limits": [{"name": "daily", "scope": "project", "window": "day",
                          "unit": "tokens", "amount": 1_000_000}]}
    slow, late = FakeClock(), FakeClock()
    a, b = make_gateway(config, clock=slow), make_gateway(config, clock=late)
    client = openai.OpenAI(base_url=a.v1, api_key=a.key(project="p"), max_retries=0)
    done: dict[str, Any] = {}

    def call() -> None:
        done["reply"] = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", max_tokens=500,
            messages=[{"role": "user", "content": "slow [[fake:delay_ms=1500]]"}])

    import threading

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while fake.fake.tally.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the upstream has the request (1.5 s before it answers)
    late.advance(31)
    assert b.run(b.runtime.admission.leases.recover(b.runtime.charge_expired)) == 1
    [estimate] = b.rows()
    assert estimate.provisional and estimate.output_tokens == 500  # written first
    caller.join(10)
    client.close()
    rid = done["reply"].headers["x-tokenstile-request-id"]
    [row] = a.rows()
    record = fake.fake.tally.last
    assert record is not None
    assert row.id == estimate.id == rid and not row.estimated and row.outcome == "ok"
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens, record.output_tokens)
    [total] = a.run(a.runtime.db.usage(UsageQuery()))
    assert (total["requests"], total["output_tokens"], total["cost_nano"]) == (
        1, row.output_tokens, row.cost_nano)
    [limit] = [lim for lim in a.runtime.admission.limits if lim.name == "daily"]
    key, _ = counter_key(limit, "p", slow.now())
    used = [row.input_tokens + row.output_tokens]
    # the settle follows the row's write, after the client has its answer
    assert settled(lambda: a.run(a.runtime.counters.read([key])), used.__eq__) == used
