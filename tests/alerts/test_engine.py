"""The engine: background delivery with retries, dedupe (also across restarts), history."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import WebhookReceiver
from tokenstile.alerts.channels import Channel, DeliveryError, EmailChannel, WebhookChannel
from tokenstile.alerts.engine import AlertEngine
from tokenstile.alerts.rules import Alert
from tokenstile.clock import FakeClock
from tokenstile.stores.alerts import AlertHistory, AlertRecord, Delivery
from tokenstile.stores.alerts_memory import MemoryAlertHistory
from tokenstile.stores.alerts_sqlite import SqliteAlertHistory
from tokenstile.stores.db_sqlite import SqliteDatabase
from tokenstile.types import LedgerRow

from .conftest import SmtpServer


def alert(key: str = "k1", ts: float = 1_767_225_600.0, channels: tuple[str, ...] = ()
          ) -> Alert:
    return Alert(kind="test", severity="info", title=f"title {key}", message="message",
                 dedupe_key=key, data={"n": 1}, ts=ts, channels=channels)


class FlakyChannel:
    """Fails ``failures`` times, then succeeds; records what it delivered."""

    def __init__(self, name: str = "flaky", failures: int = 0, retryable: bool = True,
                 delay_s: float = 0.0) -> None:
        self.name = name
        self.failures = failures
        self.retryable = retryable
        self.delay_s = delay_s
        self.attempts = 0
        self.sent: list[str] = []
        self.closed = False

    async def send(self, a: Alert) -> None:
        self.attempts += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures > 0:
            self.failures -= 1
            raise DeliveryError(self.name, "down", retryable=self.retryable)
        self.sent.append(a.dedupe_key)

    async def close(self) -> None:
        self.closed = True


def engine(channels: Mapping[str, Channel], history: AlertHistory | None = None,
           **kw: Any) -> AlertEngine:
    options: dict[str, Any] = {"base_delay_s": 0.01, "max_delay_s": 0.05,
                               "rng": random.Random(7)}
    options.update(kw)
    return AlertEngine(channels, history or MemoryAlertHistory(), FakeClock(), **options)


async def test_retries_succeed_after_the_receiver_fails_twice(
        webhook: WebhookReceiver) -> None:
    webhook.fail_next = 2
    history = MemoryAlertHistory()
    eng = engine({"hook": WebhookChannel(webhook.url, name="hook")}, history)
    await eng.start()
    assert eng.submit(alert("retry"))
    await eng.flush()
    await eng.close()
    assert webhook.attempts == 3
    assert [b["dedupe_key"] for b in webhook.bodies] == ["retry"]
    record = await history.get("retry")
    assert record is not None
    assert record.deliveries == [Delivery("hook", True, 3, 1_767_225_600.0)]
    assert eng.stats.delivered == 1 and eng.stats.failed == 0


async def test_webhook_and_email_both_receive(webhook: WebhookReceiver,
                                              smtp_server: SmtpServer) -> None:
    eng = engine({
        "slack": WebhookChannel(webhook.url, format="slack", name="slack"),
        "email": EmailChannel(smtp_server.host, smtp_server.port, "ts@example.com",
                              ["ops@example.com"], name="email", timeout_s=5),
    })
    await eng.start()
    eng.submit(alert("both"))
    await eng.flush()
    await eng.close()
    assert len(webhook.bodies) == 1 and "title both" in webhook.bodies[0]["text"]
    assert len(smtp_server.sink.messages) == 1


async def test_bounded_attempts_then_recorded_as_failed() -> None:
    flaky = FlakyChannel(failures=100)
    history = MemoryAlertHistory()
    eng = engine({"flaky": flaky}, history, max_attempts=3)
    await eng.start()
    eng.submit(alert("never"))
    await eng.flush()
    await eng.close()
    assert flaky.attempts == 3
    record = await history.get("never")
    assert record is not None
    [delivery] = record.deliveries
    assert not delivery.ok and delivery.attempts == 3 and "down" in (delivery.error or "")
    assert flaky.closed


async def test_non_retryable_failure_stops_at_once() -> None:
    flaky = FlakyChannel(failures=100, retryable=False)
    eng = engine({"flaky": flaky}, max_attempts=5)
    await eng.start()
    eng.submit(alert())
    await eng.flush()
    await eng.close()
    assert flaky.attempts == 1


def test_backoff_is_exponential_bounded_and_jittered() -> None:
    eng = AlertEngine({}, MemoryAlertHistory(), base_delay_s=1.0, max_delay_s=8.0,
                      rng=random.Random(1))
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [eng.backoff(attempt) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 4  # jittered, not constant


async def test_dedupe_by_key_and_default_channels() -> None:
    a, b = FlakyChannel("a"), FlakyChannel("b")
    eng = engine({"a": a, "b": b}, default_channels=["a"])
    await eng.start()
    for _ in range(3):
        eng.submit(alert("same"))
    eng.submit(alert("other", channels=("b",)))
    await eng.flush()
    eng.submit(alert("same"))
    await eng.flush()
    await eng.close()
    assert a.sent == ["same"]
    assert b.sent == ["other"]
    assert eng.stats.deduped == 3


async def test_a_failed_channel_is_retried_by_a_later_alert_with_the_key() -> None:
    ok, flaky = FlakyChannel("ok"), FlakyChannel("flaky", failures=2)
    eng = engine({"ok": ok, "flaky": flaky}, max_attempts=1)
    await eng.start()
    eng.submit(alert("k"))
    await eng.flush()
    eng.submit(alert("k"))
    await eng.flush()
    assert ok.sent == ["k"] and flaky.sent == []
    eng.submit(alert("k"))
    await eng.flush()
    eng.submit(alert("k"))
    await eng.flush()
    await eng.close()
    assert ok.sent == ["k"] and flaky.sent == ["k"]


async def test_unknown_channel_is_a_recorded_failure() -> None:
    history = MemoryAlertHistory()
    eng = engine({}, history)
    await eng.start()
    eng.submit(alert("x", channels=("pager",)))
    await eng.flush()
    await eng.close()
    record = await history.get("x")
    assert record is not None
    assert "no alert channel named 'pager'" in (record.deliveries[0].error or "")


async def test_submit_is_non_blocking_and_delivery_is_concurrent() -> None:
    slow = FlakyChannel("slow", delay_s=0.2)
    eng = engine({"slow": slow}, concurrency=8)
    await eng.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(8):
        eng.submit(alert(f"k{i}"))
    assert loop.time() - started < 0.05
    await eng.flush()
    assert loop.time() - started < 1.0  # eight slow deliveries overlap
    await eng.close()
    assert sorted(slow.sent) == [f"k{i}" for i in range(8)]


async def test_queue_is_bounded() -> None:
    eng = engine({"a": FlakyChannel("a")}, max_pending=2)
    assert eng.submit(alert("1")) and eng.submit(alert("2"))
    assert not eng.submit(alert("3"))
    assert eng.stats.dropped == 1
    await eng.start()
    await eng.close()


async def test_close_drains_pending_deliveries() -> None:
    slow = FlakyChannel("slow", delay_s=0.05)
    eng = engine({"slow": slow}, concurrency=2)
    await eng.start()
    for i in range(6):
        eng.submit(alert(f"k{i}"))
    await eng.close(timeout_s=5)
    assert len(slow.sent) == 6
    assert not eng.submit(alert("late"))


async def test_close_is_bounded_in_time() -> None:
    stuck = FlakyChannel("stuck", delay_s=30)
    eng = engine({"stuck": stuck})
    await eng.start()
    eng.submit(alert())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await eng.close(timeout_s=0.2)
    assert loop.time() - started < 2


async def test_dedupe_survives_a_restart_with_sqlite(tmp_path: Path,
                                                     webhook: WebhookReceiver) -> None:
    url = f"sqlite:///{tmp_path}/ts.db"
    for _ in range(2):  # two lifetimes of the gateway
        eng = engine({"hook": WebhookChannel(webhook.url, name="hook")},
                     SqliteAlertHistory(url))
        await eng.start()
        eng.submit(alert("budget:daily:demo:20260101:0.5"))
        await eng.flush()
        await eng.close()
    assert [b["dedupe_key"] for b in webhook.bodies] == ["budget:daily:demo:20260101:0.5"]


async def test_sqlite_history_shares_the_ledger_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ts.db"
    db = SqliteDatabase(url)
    await db.open()
    await db.insert_ledger([LedgerRow(id="r1", ts=1.0)])
    history = SqliteAlertHistory(url)
    await history.open()
    first = await history.record(alert("a", ts=100.0))
    again = await history.record(alert("a", ts=200.0))
    await history.record(alert("b", ts=300.0))
    await history.add_delivery("a", Delivery("hook", False, 2, 101.0, "down"))
    await history.add_delivery("a", Delivery("hook", True, 1, 102.0))
    assert first.new and not again.new and again.id == first.id
    recent = await history.recent(limit=10)
    assert [r.alert.dedupe_key for r in recent] == ["b", "a"]
    assert [r.alert.dedupe_key for r in await history.recent(since=150.0)] == ["b"]
    a = await history.get("a")
    assert a is not None and a.alert.ts == 100.0 and a.alert.data == {"n": 1}
    assert [d.ok for d in a.deliveries] == [False, True]
    assert a.delivered_to() == {"hook"} and a.failed_for_good() == set()
    as_dict = a.to_dict()
    assert as_dict["deliveries"][1]["channel"] == "hook" and as_dict["id"] == first.id
    assert await history.prune(before=250.0) == 1
    await history.close()
    assert len(await db.ledger_rows()) == 1
    await db.close()
    conn = sqlite3.connect(f"{tmp_path}/ts.db")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(alerts)")]
    conn.close()
    assert columns == ["id", "ts", "kind", "severity", "title", "message", "dedupe_key",
                       "data", "deliveries"]


async def test_two_processes_sharing_the_file_deliver_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ts.db"
    a, b = FlakyChannel("a", delay_s=0.05), FlakyChannel("a", delay_s=0.05)
    one = engine({"a": a}, SqliteAlertHistory(url))
    two = engine({"a": b}, SqliteAlertHistory(url))
    await one.start()
    await two.start()
    one.submit(alert("shared"))
    two.submit(alert("shared"))
    await asyncio.gather(one.flush(), two.flush())
    await one.close()
    await two.close()
    assert len(a.sent) + len(b.sent) == 1


async def test_history_unavailable_still_delivers() -> None:
    class Broken(MemoryAlertHistory):
        async def record(self, alert: Alert) -> AlertRecord:
            raise sqlite3.OperationalError("disk I/O error")

    ok = FlakyChannel("ok")
    eng = engine({"ok": ok}, Broken())
    await eng.start()
    eng.submit(alert())
    await eng.flush()
    await eng.close()
    assert ok.sent == ["k1"] and eng.stats.history_errors == 1


async def test_recent_through_the_engine() -> None:
    eng = engine({"a": FlakyChannel("a")})
    await eng.start()
    for i in range(5):
        eng.submit(alert(f"k{i}", ts=1000.0 + i))
    await eng.flush()
    recent = await eng.recent(limit=3)
    await eng.close()
    assert [r.alert.dedupe_key for r in recent] == ["k4", "k3", "k2"]
    assert all(r.deliveries[0].ok for r in recent)
