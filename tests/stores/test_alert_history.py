"""One alert-history suite, every backend: memory, SQLite (the ledger's file) and real
PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from tokenstile.alerts.rules import Alert
from tokenstile.stores.alerts import AlertHistory, Delivery, history_from_url
from tokenstile.stores.alerts_memory import MemoryAlertHistory
from tokenstile.stores.alerts_postgres import PostgresAlertHistory
from tokenstile.stores.alerts_sqlite import SqliteAlertHistory
from tokenstile.stores.counters import StoreConfigError


def alert(key: str, ts_: float = 100.0) -> Alert:
    return Alert(kind="budget", severity="warning", title="t", message="m", dedupe_key=key,
                 data={"n": 1, "when": datetime(2024, 1, 1)}, ts=ts_)  # type: ignore[dict-item]


async def test_alert_history(history: AlertHistory) -> None:
    first = await history.record(alert("a", 100.0))
    again = await history.record(alert("a", 200.0))
    await history.record(alert("b", 300.0))
    await history.add_delivery("a", Delivery("hook", False, 2, 101.0, "down"))
    await history.add_delivery("a", Delivery("hook", True, 1, 102.0))
    assert first.new and not again.new and again.id == first.id
    assert [r.alert.dedupe_key for r in await history.recent(limit=10)] == ["b", "a"]
    assert [r.alert.dedupe_key for r in await history.recent(since=150.0)] == ["b"]
    a = await history.get("a")
    assert a is not None and a.alert.ts == 100.0
    assert a.alert.data == {"n": 1, "when": "2024-01-01T00:00:00"}
    assert [d.ok for d in a.deliveries] == [False, True]
    assert a.delivered_to() == {"hook"} and a.failed_for_good() == set()
    assert await history.get("zzz") is None
    assert await history.prune(before=250.0) == 1
    assert [r.alert.dedupe_key for r in await history.recent()] == ["b"]


async def test_a_pruned_key_fires_again_and_failures_are_kept(history: AlertHistory) -> None:
    await history.record(alert("x", 10.0))
    await history.add_delivery("x", Delivery("mail", False, 5, 11.0, "refused"))
    found = await history.get("x")
    assert found is not None and found.failed_for_good() == {"mail"}
    assert found.to_dict()["deliveries"][0]["error"] == "refused"
    assert await history.prune(before=20.0) == 1
    assert (await history.record(alert("x", 30.0))).new


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Backends that several gateway processes can share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_alert_dedupe_across_gateways(shared_url: str) -> None:
    many = [history_from_url(shared_url) for _ in range(4)]
    await asyncio.gather(*(h.open() for h in many))
    records = await asyncio.gather(*(h.record(alert("shared")) for h in many))
    assert sum(r.new for r in records) == 1 and len({r.id for r in records}) == 1
    await asyncio.gather(*(h.close() for h in many))


def test_history_from_url(tmp_path: Path) -> None:
    assert isinstance(history_from_url("memory://"), MemoryAlertHistory)
    assert isinstance(history_from_url(f"sqlite:///{tmp_path}/x.db"), SqliteAlertHistory)
    assert isinstance(history_from_url("postgresql://u@h/db"), PostgresAlertHistory)
    with pytest.raises(StoreConfigError, match="postgresql"):
        history_from_url("mysql://u@h/db")
    for bad in ("memory://x", "memory://?size=3", f"sqlite:///{tmp_path}/x.db?colour=blue"):
        with pytest.raises(StoreConfigError):
            history_from_url(bad)
