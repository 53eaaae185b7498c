"""The one usage planner both databases follow: which hours the rollup answers and which the
ledger, above all in zones whose days do not start on a UTC hour (India +5:30, Nepal +5:45,
Chatham +13:45), and that SQLite and PostgreSQL really read the same hours."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from tokenstile.stores.database import Database, UsageQuery
from tokenstile.stores.usage_plan import (
    HOUR,
    UsagePlan,
    aligned,
    boundary_hours,
    combine,
    plan_usage,
    rollup_dimension,
)
from tokenstile.types import LedgerRow


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


DAY_START = ts("2024-03-05T00:00:00+00:00")
DAY_END = ts("2024-03-07T00:00:00+00:00")


def midnights(tz: str, first: float, last: float) -> list[float]:
    """Every local midnight of ``tz`` in [first, last), found day by day with zoneinfo."""
    zone = ZoneInfo(tz)
    day = datetime.fromtimestamp(first, zone).date() - timedelta(days=1)
    out = []
    while True:
        start = datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
        if start >= last:
            return out
        if start >= first:
            out.append(start)
        day += timedelta(days=1)


def straddled(tz: str, first: int, last: int) -> list[int]:
    """UTC hours in [first, last) that a local day starts strictly inside of."""
    return sorted({int(m // HOUR) * HOUR for m in midnights(tz, first, last) if m % HOUR})


# --- the plan, as a pure function ----------------------------------------------------------


def test_zones_on_the_hour_read_whole_hours_from_the_rollup() -> None:
    query = UsageQuery(bucket="day", tz="Europe/Berlin", since=DAY_START - 1800.5,
                       until=DAY_END + 60)
    plan = plan_usage(query)
    assert plan == UsagePlan("", DAY_START, DAY_END, (),
                             ((DAY_START - 1800.5, DAY_START), (DAY_END, DAY_END + 60)))


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Asia/Kathmandu", "Pacific/Chatham",
                                "Australia/Lord_Howe", "America/St_Johns", "Asia/Tehran"])
@pytest.mark.parametrize("bucket", ["day", "month"])
def test_days_starting_inside_an_hour_read_that_hour_from_the_ledger(tz: str,
                                                                     bucket: str) -> None:
    first, last = ts("2024-01-01T00:00:00+00:00"), ts("2025-01-01T00:00:00+00:00")
    query = UsageQuery(bucket=bucket, tz=tz, since=first, until=last, group_by=["project"])
    plan = plan_usage(query)
    starts = straddled(tz, first, last)
    if bucket == "month":
        zone = ZoneInfo(tz)
        starts = [h for h in starts
                  if datetime.fromtimestamp(h + HOUR, zone).day == 1]
    assert not aligned(tz) and plan.dim == "" and (plan.first, plan.last) == (first, last)
    assert list(plan.skip) == starts and starts
    assert plan.ledger == tuple((h, h + HOUR) for h in starts)


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Asia/Kathmandu", "Pacific/Chatham"])
def test_local_hours_off_the_hour_read_the_ledger_alone(tz: str) -> None:
    query = UsageQuery(bucket="hour", tz=tz, since=DAY_START, until=DAY_END)
    assert plan_usage(query) == UsagePlan(None, ledger=((DAY_START, DAY_END),))
    unbucketed = UsageQuery(tz=tz, since=DAY_START, until=DAY_END)
    assert plan_usage(unbucketed) == UsagePlan("", DAY_START, DAY_END)


def test_an_open_range_asks_for_the_rollups_span() -> None:
    query = UsageQuery(bucket="day", tz="Asia/Kolkata", group_by=["user"])
    asked = plan_usage(query)
    assert asked.needs_span and asked.dim == "user"
    plan = plan_usage(query, span=(DAY_START, DAY_END - HOUR))
    assert not plan.needs_span and (plan.first, plan.last) == (None, None)
    assert list(plan.skip) == straddled("Asia/Kolkata", DAY_START, DAY_END) == [
        ts("2024-03-05T18:00:00+00:00"), ts("2024-03-06T18:00:00+00:00")]
    assert not plan_usage(UsageQuery(bucket="day", tz="UTC")).needs_span


def test_which_dimension_answers() -> None:
    assert rollup_dimension(UsageQuery(group_by=["organization", "project"])) == ""
    assert rollup_dimension(UsageQuery(group_by=["project"], filters={"team": "t"})) == "team"
    assert rollup_dimension(UsageQuery(group_by=["user", "feature"])) is None
    assert rollup_dimension(UsageQuery(group_by=["api"])) is None
    assert rollup_dimension(UsageQuery(group_by=["project"]), "tag") == "tag"
    assert rollup_dimension(UsageQuery(group_by=["user"]), "degraded") is None
    inside_one_hour = UsageQuery(since=DAY_START + 60, until=DAY_START + 120)
    assert plan_usage(inside_one_hour) == UsagePlan(None, ledger=((DAY_START + 60,
                                                                   DAY_START + 120),))


def test_boundary_hours_of_months() -> None:
    query = UsageQuery(bucket="month", tz="Asia/Kolkata")
    first, last = ts("2024-01-15T00:00:00+00:00"), ts("2024-04-15T00:00:00+00:00")
    assert boundary_hours(query, first, last) == [
        ts(f"2024-{m:02d}-{d}T18:00:00+00:00") for m, d in ((1, 31), (2, 29), (3, 31))]


def test_combine_sums_groups_and_orders_by_bucket_then_cost() -> None:
    totals = ("requests", "cost_nano")

    def parts() -> list[dict[str, Any]]:
        return [{"bucket": "b", "p": "x", "requests": 1, "cost_nano": 5},
                {"bucket": "a", "p": "x", "requests": 1, "cost_nano": 1},
                {"bucket": "a", "p": "y", "requests": 0, "cost_nano": 0},
                {"bucket": "b", "p": "x", "requests": 2, "cost_nano": 7},
                {"bucket": "a", "p": "z", "requests": 1, "cost_nano": 3}]

    got = combine(parts(), UsageQuery(bucket="day", limit=2), totals)
    assert got == [{"bucket": "a", "p": "z", "requests": 1, "cost_nano": 3},
                   {"bucket": "a", "p": "x", "requests": 1, "cost_nano": 1}]
    assert combine(parts(), UsageQuery(bucket="day"), totals)[-1] == {
        "bucket": "b", "p": "x", "requests": 3, "cost_nano": 12}


# --- both backends follow it ---------------------------------------------------------------

ROW_TIMES = ["2024-03-05T10:05:00+00:00", "2024-03-05T10:30:00+00:00",
             "2024-03-05T12:20:00+00:00", "2024-03-05T18:10:00+00:00",
             "2024-03-05T18:50:00+00:00", "2024-03-06T03:00:00+00:00",
             "2024-03-06T18:29:59.5+00:00", "2024-03-06T18:30:00+00:00"]
TAMPERED = [ts("2024-03-05T10:00:00+00:00"), ts("2024-03-05T12:00:00+00:00"),
            ts("2024-03-05T18:00:00+00:00"), ts("2024-03-06T18:00:00+00:00")]
EXTRA = 1_000_000


def rows() -> list[LedgerRow]:
    return [LedgerRow(id=f"r{i}", ts=datetime.fromisoformat(t).timestamp(), organization="o",
                      project="p", cost_nano=10 ** i, input_tokens=i)
            for i, t in enumerate(ROW_TIMES)]


def by_day(items: list[dict[str, Any]]) -> dict[str, int]:
    return {item["bucket"]: item["cost_nano"] for item in items}


def expected(tz: str, tampered: bool) -> dict[str, int]:
    """The ledger's answer by local day; with ``tampered``, plus ``EXTRA`` for every
    tampered hour that lies wholly inside one local day (read from the rollup)."""
    zone = ZoneInfo(tz)
    out: dict[str, int] = {}
    for row in rows():
        day = datetime.fromtimestamp(row.ts, zone).date().isoformat()
        out[day] = out.get(day, 0) + row.cost_nano
    if tampered:
        split = set(straddled(tz, DAY_START - 86400, DAY_END + 86400))
        for hour in TAMPERED:
            if hour not in split:
                day = datetime.fromtimestamp(hour, zone).date().isoformat()
                out[day] += EXTRA
    return out


async def tamper_rollup(db_url: str) -> None:
    """Add ``EXTRA`` to the rollup's totals of the ``TAMPERED`` hours, behind the ledger's
    back: an answer shows it only for the hours it reads from the rollup."""
    if db_url.startswith("sqlite:///"):
        with sqlite3.connect(db_url[len("sqlite:///"):]) as conn:
            conn.executemany("UPDATE usage_hourly SET cost_nano = cost_nano + ? "
                             "WHERE dim = '' AND hour = ?", [(EXTRA, h) for h in TAMPERED])
        return
    base, _, query = db_url.partition("?")
    conn = await asyncpg.connect(base, server_settings={"search_path": query.split("=", 1)[1]})
    try:
        await conn.execute("UPDATE usage_hourly SET cost_nano = cost_nano + $1 "
                           "WHERE dim = '' AND hour = ANY($2::bigint[])", EXTRA, TAMPERED)
    finally:
        await conn.close()


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "Asia/Kathmandu", "Pacific/Chatham", "UTC"])
async def test_both_backends_read_the_same_hours_from_the_rollup(db: Database, db_url: str,
                                                                 tz: str) -> None:
    await db.insert_ledger(rows())
    bounded = UsageQuery(bucket="day", tz=tz, since=DAY_START, until=DAY_END)
    open_ended = UsageQuery(bucket="day", tz=tz, filters={"organization": "o"})
    for query in (bounded, open_ended):
        assert by_day(await db.usage(query)) == expected(tz, tampered=False)
    await tamper_rollup(db_url)
    for query in (bounded, open_ended):
        assert by_day(await db.usage(query)) == expected(tz, tampered=True)
    assert expected(tz, True) != expected(tz, False)


def test_the_sample_days_start_inside_an_hour_where_expected() -> None:
    assert straddled("Asia/Kolkata", DAY_START, DAY_END) == [TAMPERED[2], TAMPERED[3]]
    assert straddled("Pacific/Chatham", DAY_START, DAY_END) == [
        ts("2024-03-05T10:00:00+00:00"), ts("2024-03-06T10:00:00+00:00")]
    assert straddled("Asia/Kathmandu", DAY_START, DAY_END) == [TAMPERED[2], TAMPERED[3]]
    assert straddled("UTC", DAY_START, DAY_END) == []
