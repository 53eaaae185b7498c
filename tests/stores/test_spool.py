"""The ledger's outage mode: rows go to a bounded local spool while the database is away,
survive a restart, and are written exactly once when it answers again.

A fake database plays the outages that need precise control; real PostgreSQL (behind a
TCP proxy the test stops and restarts, so the shared server itself is never touched) and
SQLite prove that a crash mid-drain cannot bill a call twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.tcp_proxy import TcpProxy
from tokenstile.ledger import LedgerWriter
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.database import Database, UsageQuery, database_from_url
from tokenstile.stores.db_postgres import PostgresDatabase
from tokenstile.stores.spool import LedgerSpool, database_label, spool_path
from tokenstile.types import LedgerRow

PG_ADMIN_URL = os.environ.get("TOKENSTILE_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")
WAIT_S = 20.0


def rows(n: int, prefix: str = "r", start: int = 0) -> list[LedgerRow]:
    return [LedgerRow(id=f"{prefix}{i:05d}", ts=1_700_000_000.0 + i, project="p",
                      cost_nano=1000 + i, input_tokens=i, tags={"i": str(i)})
            for i in range(start, start + n)]


class FakeDatabase:
    """Only what the writer needs; ``down`` plays an outage, ``refuse`` bad rows.

    Idempotent on id, as both real backends are; ``attempts`` counts every id sent."""

    def __init__(self) -> None:
        self.url = "fake://ledger"
        self.down = False
        self.refuse: set[str] = set()
        self.stored: dict[str, LedgerRow] = {}
        self.order: list[str] = []
        self.attempts: Counter[str] = Counter()

    async def insert_ledger(self, batch: Sequence[LedgerRow]) -> None:
        if self.down:
            raise StoreUnavailable("the fake database is down")
        for row in batch:
            if row.id in self.refuse:
                raise ValueError(f"row {row.id} is bad")
        for row in batch:
            self.attempts[row.id] += 1
            if row.id not in self.stored:
                self.stored[row.id] = row
                self.order.append(row.id)


def writer_for(db: Any, spool: LedgerSpool, **kwargs: Any) -> LedgerWriter:
    kwargs.setdefault("linger_s", 0.01)
    kwargs.setdefault("max_retry_delay_s", 0.2)
    return LedgerWriter(cast(Database, db), spool=spool, **kwargs)


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while loop.time() < deadline:
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# --- the spool file --------------------------------------------------------------------------


async def test_spool_keeps_order_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = LedgerSpool(path)
    assert await spool.open() == 0 and not path.exists()  # nothing is created until needed
    assert await spool.append(rows(10)) == 10
    first = await spool.peek(4)
    assert [i.row.id for i in first] == ["r00000", "r00001", "r00002", "r00003"]
    await spool.remove([i.seq for i in first])
    assert spool.depth == 6
    await spool.close()

    again = LedgerSpool(path)
    assert await again.open() == 6
    assert [i.row for i in await again.peek(100)] == rows(10)[4:]  # exactly, field by field
    await again.close()


async def test_spool_is_bounded_by_rows_and_bytes(tmp_path: Path) -> None:
    by_rows = LedgerSpool(tmp_path / "rows.spool", max_rows=5)
    assert await by_rows.append(rows(8)) == 5
    assert by_rows.full and by_rows.depth == 5
    assert await by_rows.append(rows(3, "x")) == 0
    assert await by_rows.append(rows(3, "y"), force=True) == 3  # shutdown: the bound yields
    assert by_rows.depth == 8
    await by_rows.close()

    by_bytes = LedgerSpool(tmp_path / "bytes.spool", max_bytes=2000)
    taken = await by_bytes.append(rows(50))
    assert 0 < taken < 50 and by_bytes.size_bytes <= 2000
    assert await by_bytes.append(rows(1, "z")) == 0
    await by_bytes.close()


async def test_processes_sharing_a_spool_share_its_bound(tmp_path: Path) -> None:
    one, two = LedgerSpool(tmp_path / "s.spool", max_rows=10), \
        LedgerSpool(tmp_path / "s.spool", max_rows=10)
    assert await one.append(rows(7, "a")) == 7
    assert await two.append(rows(7, "b")) == 3
    assert await one.refresh() == 10
    items = await two.peek(100)
    await one.remove([i.seq for i in items[:5]])
    await two.remove([i.seq for i in items[:7]])  # overlapping removals count once
    assert await one.refresh() == 3 and await two.refresh() == 3
    await one.close()
    await two.close()


def test_spool_names_hide_passwords_and_ignore_tuning() -> None:
    url = "postgresql://app:s3cret@db.internal:5432/tokenstile?schema=gw&pool_max=9"
    assert "s3cret" not in database_label(url)
    assert "s3cret" not in str(spool_path(url, "/spool"))
    assert spool_path(url, "/d") == spool_path(url.replace("s3cret", "rotated"), "/d")
    assert spool_path(url, "/d") == spool_path(url.replace("pool_max=9", "pool_max=2"), "/d")
    assert spool_path(url, "/d") != spool_path(url.replace("schema=gw", "schema=other"), "/d")


# --- the writer in an outage ---------------------------------------------------------------


async def test_healthy_database_never_touches_the_disk(tmp_path: Path) -> None:
    db = FakeDatabase()
    writer = writer_for(db, LedgerSpool(tmp_path / "s.spool"))
    writer.start()
    for row in rows(20):
        writer.submit(row)
    await asyncio.wait_for(writer.flush(), WAIT_S)
    await writer.close()
    assert len(db.stored) == 20 and not (tmp_path / "s.spool").exists()


async def test_outage_rows_go_to_the_spool_then_drain_once_in_order(tmp_path: Path) -> None:
    db = FakeDatabase()
    spool = LedgerSpool(tmp_path / "s.spool")
    writer = writer_for(db, spool, batch_size=7)
    writer.start()
    writer.submit(rows(1, "ok")[0])
    await asyncio.wait_for(writer.flush(), WAIT_S)
    db.down = True
    sent = rows(50)
    for row in sent:
        writer.submit(row)
        await asyncio.sleep(0)
    await until(lambda: spool.depth == 50 and writer.in_memory == 0, "rows in the spool")
    assert writer.backlog == writer.spool_depth == 50 and writer.database_down
    assert writer.stats()["spooled"] == 50 and writer.failures >= 1
    db.down = False
    await asyncio.wait_for(writer.flush(), WAIT_S)
    assert db.order == ["ok00000", *[r.id for r in sent]]
    assert set(db.attempts.values()) == {1}
    assert writer.backlog == 0 and not writer.database_down and writer.written == 51
    await writer.close()


async def test_spooled_rows_survive_a_restart(tmp_path: Path) -> None:
    db = FakeDatabase()
    db.down = True
    first = writer_for(db, LedgerSpool(tmp_path / "s.spool"))
    first.start()
    for row in rows(30):
        first.submit(row)
    await first.close()  # the gateway stops during the outage
    assert db.stored == {}

    db.down = False
    second = writer_for(db, LedgerSpool(tmp_path / "s.spool"))
    second.start()  # the next start drains what the last one left
    await until(lambda: len(db.stored) == 30, "the spool drained on start")
    await asyncio.wait_for(second.flush(), WAIT_S)
    await second.close()
    assert db.order == [r.id for r in rows(30)] and set(db.attempts.values()) == {1}
    assert await LedgerSpool(tmp_path / "s.spool").open() == 0


async def test_full_spool_keeps_rows_in_memory_loudly(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    db = FakeDatabase()
    db.down = True
    spool = LedgerSpool(tmp_path / "s.spool", max_rows=5)
    writer = writer_for(db, spool)
    heard: list[tuple[str, int]] = []
    writer.alarms.append(lambda event, n: heard.append((event, n)))
    writer.start()
    with caplog.at_level(logging.ERROR, logger="tokenstile.ledger"):
        for row in rows(12):
            writer.submit(row)
        await until(lambda: spool.depth == 5 and writer.in_memory == 7, "spool full")
    assert writer.backlog == 12 and writer.spool_full_events == 1
    assert ("spool_full", 7) in heard and ("spooled", 5) in heard
    assert any("is full" in r.getMessage() for r in caplog.records)
    db.down = False
    await asyncio.wait_for(writer.flush(), WAIT_S)
    await writer.close()
    assert sorted(db.stored) == [r.id for r in rows(12)] and writer.lost == 0


async def test_shutdown_in_an_outage_spools_past_the_bound(tmp_path: Path) -> None:
    db = FakeDatabase()
    db.down = True
    writer = writer_for(db, LedgerSpool(tmp_path / "s.spool", max_rows=3))
    writer.start()
    for row in rows(10):
        writer.submit(row)
    await asyncio.wait_for(writer.close(), WAIT_S)
    assert writer.lost == 0
    assert await LedgerSpool(tmp_path / "s.spool").open() == 10


async def test_unwritable_spool_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    db = FakeDatabase()
    db.down = True
    writer = writer_for(db, LedgerSpool(blocker / "s.spool"))
    writer.start()
    for row in rows(5):
        writer.submit(row)
    await until(lambda: writer.failures >= 2, "retries")
    assert writer.in_memory == 5 and writer.spool_depth == 0
    db.down = False
    await asyncio.wait_for(writer.flush(), WAIT_S)
    await writer.close()
    assert len(db.stored) == 5


async def test_shutdown_with_no_database_and_no_disk_logs_every_row(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    db = FakeDatabase()
    db.down = True
    writer = writer_for(db, LedgerSpool(blocker / "s.spool"))
    writer.start()
    for row in rows(3):
        writer.submit(row)
    with caplog.at_level(logging.ERROR, logger="tokenstile.ledger"):
        await asyncio.wait_for(writer.close(), WAIT_S)
    assert writer.lost == 3
    logged = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
    assert len(logged) == 3 and all(f'"r0000{i}"' in logged[i] for i in range(3))


async def test_refused_row_is_set_aside_and_the_rest_written(tmp_path: Path) -> None:
    db = FakeDatabase()
    db.refuse = {"r00002"}
    spool = LedgerSpool(tmp_path / "s.spool")
    writer = writer_for(db, spool)
    heard: list[tuple[str, int]] = []
    writer.alarms.append(lambda event, n: heard.append((event, n)))
    writer.start()
    for row in rows(5):
        writer.submit(row)
    await asyncio.wait_for(writer.flush(), WAIT_S)
    await writer.close()
    assert sorted(db.stored) == ["r00000", "r00001", "r00003", "r00004"]
    assert heard == [("rejected", 1)]
    again = LedgerSpool(tmp_path / "s.spool")
    [kept] = await again.rejected_rows()
    assert kept["id"] == "r00002" and "is bad" in kept["error"] and kept["row"] == rows(5)[2]
    assert await again.open() == 0 and again.rejected == 1
    await again.close()


# --- real databases ------------------------------------------------------------------------


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A schema of this test's own in the shared server's database, dropped afterwards."""
    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=2)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin("SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc})")
    schema = f"spool_{uuid.uuid4().hex[:12]}"
    yield f"{PG_ADMIN_URL}?schema={schema}"
    asyncio.run(admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


async def pg_count(url: str) -> tuple[int, int]:
    base, _, query = url.partition("?")
    conn = await asyncpg.connect(base, server_settings={"search_path": query.split("=")[1]})
    try:
        record = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS ids, "
                                     "coalesce(sum(cost_nano), 0)::bigint AS cost FROM ledger")
        assert record is not None and record["n"] == record["ids"]
        return int(record["n"]), int(record["cost"])
    finally:
        await conn.close()


async def test_postgres_outage_spools_and_drains_exactly_once(tmp_path: Path,
                                                              pg_schema_url: str) -> None:
    target = urlsplit(PG_ADMIN_URL)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    url = pg_schema_url.replace(f"{target.hostname}:{target.port or 5432}",
                                f"127.0.0.1:{proxy.port}", 1) + "&connect_timeout=1"
    spool_dir = tmp_path / "spool"

    db = PostgresDatabase(url)
    await db.open()
    writer = LedgerWriter(db, linger_s=0.01, max_retry_delay_s=0.2,
                          spool=LedgerSpool.for_database(url, spool_dir))
    writer.start()
    before = rows(100, "a")
    for row in before:
        writer.submit(row)
    await asyncio.wait_for(writer.flush(), WAIT_S)

    await proxy.stop()  # PostgreSQL disappears, live connections cut
    during = rows(300, "b")
    for row in during:
        writer.submit(row)
    await until(lambda: writer.spool_depth == 300 and writer.in_memory == 0,
                "rows spooled during the outage")
    assert writer.database_down
    await asyncio.wait_for(writer.close(), WAIT_S)  # and the gateway restarts meanwhile
    await db.close()
    assert any(spool_dir.iterdir())

    await proxy.start()  # PostgreSQL is back, same address
    db = PostgresDatabase(url)
    await db.open()
    writer = LedgerWriter(db, linger_s=0.01, spool=LedgerSpool.for_database(url, spool_dir))
    writer.start()
    after = rows(50, "c")
    for row in after:
        writer.submit(row)
    await until(lambda: writer.backlog == 0, "the spool drained")
    await asyncio.wait_for(writer.flush(), WAIT_S)
    await writer.close()
    await db.close()
    await proxy.stop()
    everything = before + during + after
    assert await pg_count(pg_schema_url) == (len(everything),
                                             sum(r.cost_nano for r in everything))


async def test_crash_mid_drain_does_not_double_bill(tmp_path: Path, any_db_url: str) -> None:
    """A process that wrote a spooled batch and died before removing it: the next start
    writes that batch again, and the database keeps each row once."""
    url = any_db_url
    spool = LedgerSpool(tmp_path / "s.spool")
    spooled = rows(200)
    await spool.append(spooled)
    await spool.close()
    db = database_from_url(url)
    await db.open()
    await db.insert_ledger(spooled[:120])  # written, never removed from the spool

    writer = LedgerWriter(db, linger_s=0.01, batch_size=50,
                          spool=LedgerSpool(tmp_path / "s.spool"))
    writer.start()
    await until(lambda: writer.backlog == 0, "the spool drained")
    await writer.close()
    [total] = await db.usage(UsageQuery())
    assert total["requests"] == 200
    assert total["cost_nano"] == sum(r.cost_nano for r in spooled)
    await db.close()
