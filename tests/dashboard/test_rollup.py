"""The hourly rollup answers exactly what the ledger would: random ledgers, random ranges
(partial hours at both ends), every dimension it serves, tags and degradations, zones with
whole and half-hour offsets; and a database from before the rollup gets one filled in."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenstile.stores.database import UsageQuery
from tokenstile.stores.db_sqlite import SqliteDatabase
from tokenstile.types import LedgerRow

T0 = 1_775_174_400.0  # 2026-04-03: Lord Howe leaves summer time (by 30 minutes) on the 5th
TOTALS = ("requests", "input_tokens", "cached_input_tokens", "output_tokens",
          "reasoning_tokens", "cost_nano", "saved_nano", "blocked")


def label_of(value: float, kind: str, tz: str) -> str:
    local = datetime.fromtimestamp(value, ZoneInfo(tz))
    return local.strftime({"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}[kind])


def expected(rows: list[LedgerRow], query: UsageQuery, label: str | None = None
             ) -> list[tuple[tuple[str, str], ...]]:
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        if query.since is not None and row.ts < query.since:
            continue
        if query.until is not None and row.ts >= query.until:
            continue
        if any(getattr(row, k) != v for k, v in query.filters.items()):
            continue
        labels: list[Any] = [None]
        if label == "tag":
            labels = [f"{k}={v}" for k, v in row.tags.items()]
        elif label == "degraded":
            labels = list(row.degraded)
        for extra in labels:
            key: tuple[Any, ...] = tuple(getattr(row, g) for g in query.group_by)
            if query.bucket:
                key = (label_of(row.ts, query.bucket, query.tz), *key)
            if label:
                key = (*key, extra)
            names = [*(["bucket"] if query.bucket else []), *query.group_by,
                     *([label] if label else [])]
            item = groups.setdefault(key, {**dict(zip(names, key, strict=True)),
                                           **dict.fromkeys(TOTALS, 0)})
            item["requests"] += 1
            for name in TOTALS[1:-1]:
                item[name] += getattr(row, name)
            item["blocked"] += row.outcome == "blocked"
    return sorted(tuple(sorted((k, repr(v)) for k, v in item.items()))
                  for item in groups.values())


def got(items: list[dict[str, Any]]) -> list[tuple[tuple[str, str], ...]]:
    return sorted(tuple(sorted((k, repr(v)) for k, v in item.items())) for item in items)


ROW = st.fixed_dictionaries({
    "ts": st.floats(T0, T0 + 5 * 86400, allow_nan=False),
    "organization": st.sampled_from(["o1", "o2"]),
    "project": st.sampled_from(["a", "b", None]),
    "user": st.sampled_from(["u1", "u2", None]),
    "served_model": st.sampled_from(["gpt-4o", "gpt-4o-mini", None]),
    "feature": st.sampled_from(["chat", None]),
    "team": st.sampled_from(["t", None]),
    "tags": st.dictionaries(st.sampled_from(["env", "team"]), st.sampled_from(["x", "y"])),
    "degraded": st.lists(st.sampled_from(["trimmed", "downgraded"]), max_size=2),
    "outcome": st.sampled_from(["ok", "blocked"]),
    "input_tokens": st.integers(0, 10**6),
    "output_tokens": st.integers(0, 10**5),
    "cost_nano": st.integers(0, 10**12),
})
EDGE = st.none() | st.floats(T0 - 3600, T0 + 6 * 86400, allow_nan=False) | \
    st.integers(0, 150).map(lambda h: T0 + h * 3600)


def test_the_rollup_matches_the_ledger(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    db = SqliteDatabase(f"sqlite:///{tmp_path}/rollup.db")
    loop.run_until_complete(db.open())
    counter = iter(range(10**9))

    @settings(max_examples=120, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(specs=st.lists(ROW, max_size=30),
           keys=st.lists(st.sampled_from(["organization", "project"]), unique=True, max_size=2),
           dim=st.sampled_from([None, "served_model", "user", "feature", "team", "api"]),
           filter_on=st.sampled_from([None, "project", "user"]),
           label=st.sampled_from([None, None, "tag", "degraded"]),
           bucket=st.sampled_from([None, "hour", "day", "month"]),
           tz=st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata", "America/New_York",
                               "Asia/Tehran", "Australia/Lord_Howe", "America/St_Johns"]),
           since=EDGE, until=EDGE)
    def check(specs: list[dict[str, Any]], keys: list[str], dim: str | None,
              filter_on: str | None, label: str | None, bucket: str | None, tz: str,
              since: float | None, until: float | None) -> None:
        batch = next(counter)
        rows = [LedgerRow(id=f"{batch}-{i}", **spec) for i, spec in enumerate(specs)]
        group_by = [*keys, *([dim] if dim and not label else [])]
        filters = {"organization": f"run{batch}"}
        if filter_on == "project":
            filters["project"] = "a"
        elif filter_on == "user" and not label:
            filters["user"] = "u1"
        rows = [replace(row, organization=f"run{batch}") if i % 3 else row
                for i, row in enumerate(rows)]
        query = UsageQuery(since=since, until=until, group_by=group_by, bucket=bucket, tz=tz,
                           filters=filters, limit=100_000)
        loop.run_until_complete(db.insert_ledger(rows))
        loop.run_until_complete(db.insert_ledger(rows[:5]))  # a retried batch: no effect
        if label:
            answer = loop.run_until_complete(db.usage_by_label(query, label))
        else:
            answer = loop.run_until_complete(db.usage(query))
        assert got(answer) == expected(rows, query, label)

    try:
        check()
    finally:
        loop.run_until_complete(db.close())
        loop.close()


def test_a_database_without_the_rollup_gets_one_filled_from_its_ledger(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    rows = [LedgerRow(id=str(i), ts=T0 + i * 600, project="p", served_model="m",
                      tags={"env": "prod"}, cost_nano=10 * i, input_tokens=i)
            for i in range(50)]

    async def first() -> None:
        db = SqliteDatabase(f"sqlite:///{path}")
        await db.insert_ledger(rows)
        await db.close()

    asyncio.run(first())
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE usage_hourly")
    conn.commit()
    conn.close()

    async def second() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        db = SqliteDatabase(f"sqlite:///{path}")
        await db.insert_ledger([LedgerRow(id="new", ts=T0, project="p", cost_nano=5)])
        try:
            return (await db.usage(UsageQuery(group_by=["served_model"])),
                    await db.usage_by_label(UsageQuery(), "tag"))
        finally:
            await db.close()

    by_model, by_tag = asyncio.run(second())
    assert {r["served_model"]: r["cost_nano"] for r in by_model} == {
        "m": sum(r.cost_nano for r in rows), None: 5}
    assert [(r["tag"], r["requests"]) for r in by_tag] == [("env=prod", 50)]
