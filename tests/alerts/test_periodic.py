"""The ledger-reading rules against a real SQLite ledger, driven by a FakeClock."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tokenstile.alerts.engine import (
    AlertEngine,
    PeriodicRules,
    RuleSettings,
    month_forecast,
    unit_value,
)
from tokenstile.alerts.rules import Alert, AnomalySettings
from tokenstile.clock import FakeClock
from tokenstile.limits.model import Limit
from tokenstile.limits.windows import Window
from tokenstile.stores.alerts_sqlite import SqliteAlertHistory
from tokenstile.stores.db_sqlite import SqliteDatabase
from tokenstile.types import LedgerRow, usd_to_nano

NOW = datetime(2026, 3, 10, 12, 10, tzinfo=UTC)
_ids = itertools.count()


class Recorder:
    name = "rec"

    def __init__(self) -> None:
        self.sent: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        self.sent.append(alert)

    async def close(self) -> None:
        return None


def row(ts: float, tokens: int, cost_usd: float, **kw: object) -> LedgerRow:
    return LedgerRow(id=f"r{next(_ids)}", ts=ts, input_tokens=tokens // 2,
                     output_tokens=tokens - tokens // 2, cost_nano=usd_to_nano(cost_usd),
                     **kw)  # type: ignore[arg-type]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(f"sqlite:///{tmp_path}/ts.db")
    await database.open()
    yield database
    await database.close()


async def steady_history(db: SqliteDatabase, hours: int = 48) -> None:
    """One quiet call an hour for two days before the current hour."""
    now = NOW.timestamp()
    start = now - now % 3600
    await db.insert_ledger([
        row(start - k * 3600 + 60, 1000, 0.001, project="demo", user="alice",
            feature="chat", served_model="gpt-4o-mini")
        for k in range(1, hours + 1)])


async def runaway_hour(db: SqliteDatabase) -> None:
    now = NOW.timestamp()
    start = now - now % 3600
    await db.insert_ledger([
        row(start + i, 30_000, 0.003, project="demo", user="bob", feature="chat",
            served_model="gpt-4o")
        for i in range(25)])


def month_limit(amount: int) -> Limit:
    return Limit(name="projects.demo.monthly_limit", scope="project",
                 window=Window("month"), unit="tokens", amount=amount,
                 match=frozenset({"demo"}))


async def test_one_pass_fires_each_rule_once(db: SqliteDatabase, tmp_path: Path) -> None:
    await steady_history(db)
    await runaway_hour(db)
    clock = FakeClock(NOW)
    rec = Recorder()
    engine = AlertEngine({"rec": rec}, SqliteAlertHistory(db.url), clock)
    await engine.start()
    settings = RuleSettings(hourly_cost_usd=0.05, efficiency={"feature:chat": 10_000},
                            anomaly_by=("project",), efficiency_min_requests=10)
    rules = PeriodicRules(db, engine, [month_limit(1_000_000), month_limit(10**9)], settings,
                          clock)
    alerts = await rules.evaluate()
    kinds = sorted({a.kind for a in alerts})
    assert kinds == ["anomaly", "daily_summary", "efficiency", "hourly_cost", "projection"]
    anomalies = {a.dedupe_key for a in alerts if a.kind == "anomaly"}
    assert anomalies == {"anomaly:global:tokens:20260310T12",
                         "anomaly:project:demo:tokens:20260310T12"}  # $0.075 < $1 floor
    [hourly] = [a for a in alerts if a.kind == "hourly_cost"]
    assert hourly.data["cost_nano"] == usd_to_nano(0.075)
    [projection] = [a for a in alerts if a.kind == "projection"]
    assert projection.data["budget"] == 1_000_000
    [summary] = [a for a in alerts if a.kind == "daily_summary"]
    assert summary.data["day"] == "2026-03-09" and summary.data["requests"] == 24
    [efficiency] = [a for a in alerts if a.kind == "efficiency"]
    assert efficiency.data["requests"] == 25 + 12  # today: the runaway and 12 quiet hours

    clock.advance(120)
    again = await rules.evaluate()
    assert all(a.kind != "daily_summary" for a in again)
    await engine.flush()
    await engine.close()
    assert sorted(a.dedupe_key for a in rec.sent) == sorted(a.dedupe_key for a in alerts)


async def test_a_new_installation_is_not_an_anomaly(db: SqliteDatabase) -> None:
    await runaway_hour(db)
    clock = FakeClock(NOW)
    engine = AlertEngine({"rec": Recorder()}, SqliteAlertHistory(db.url), clock)
    await engine.start()
    rules = PeriodicRules(db, engine, [], RuleSettings(anomaly=AnomalySettings(),
                                                       anomaly_floors={}), clock)
    assert await rules.evaluate() == []
    await engine.close()


async def test_the_summary_survives_a_restart(db: SqliteDatabase) -> None:
    await steady_history(db)
    clock = FakeClock(NOW)
    sent = []
    for _ in range(2):
        rec = Recorder()
        engine = AlertEngine({"rec": rec}, SqliteAlertHistory(db.url), clock)
        await engine.start()
        await PeriodicRules(db, engine, [], RuleSettings(anomaly=None), clock).evaluate()
        await engine.flush()
        await engine.close()
        sent.append([a.kind for a in rec.sent])
    assert sent == [["daily_summary"], []]


def test_unit_value() -> None:
    r = {"requests": 3, "input_tokens": 10, "output_tokens": 5, "cost_nano": 7}
    assert [unit_value(r, u) for u in ("tokens", "input_tokens", "output_tokens",
                                        "requests", "usd")] == [15, 10, 5, 3, 7]
    assert unit_value(None, "usd") == 0


async def test_month_forecast_for_the_dashboard(db: SqliteDatabase) -> None:
    await steady_history(db, hours=24 * 9)
    forecast = await month_forecast(db, NOW.timestamp(), "UTC", unit="tokens",
                                    filters={"project": "demo"}, budget=50_000)
    # 24,000 tokens a day from 1 March: about 31 × 24,000 by the end of the month.
    assert forecast.projected_total == pytest.approx(31 * 24_000, rel=0.05)
    assert forecast.days_until_exhausted is not None
    nothing = await month_forecast(db, NOW.timestamp(), filters={"project": "other"})
    assert nothing.projected_total == 0.0
