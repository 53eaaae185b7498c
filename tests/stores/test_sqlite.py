"""The plumbing every store shares: the SQLite file base (one thread, PRAGMAs, timeouts, error
mapping, group commit) and the one registry from URL scheme to backend."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokenstile.alerts.rules import Alert
from tokenstile.stores.alerts import history_from_url
from tokenstile.stores.cache import response_cache_from_url
from tokenstile.stores.counters import StoreConfigError, StoreUnavailable, counter_store_from_url
from tokenstile.stores.database import database_from_url
from tokenstile.stores.spool import LedgerSpool
from tokenstile.stores.sqlite import SqliteFile, SqliteTimeouts, sqlite_path
from tokenstile.stores.urls import BACKENDS, backend_class
from tokenstile.types import LedgerRow


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///./x.db", "database") == "./x.db"
    assert sqlite_path("sqlite:////abs/x.db?timeout=1", "database") == "/abs/x.db"
    assert sqlite_path("sqlite:///:memory:", "database") == ":memory:"
    for url in ("sqlite://x.db", "sqlite:///", "sqlite:///dir/", "postgresql://h/db"):
        with pytest.raises(StoreConfigError):
            sqlite_path(url, "database")
    for url in ("sqlite:///:memory:", "sqlite:///x.db?mode=memory"):
        with pytest.raises(StoreConfigError, match="share"):
            sqlite_path(url, "counter store", shared=True)


@pytest.mark.parametrize(("url", "kwargs", "expected"), [
    ("sqlite:///x.db", {}, SqliteTimeouts(2000, 3.0)),
    ("sqlite:///x.db?busy_timeout=100", {}, SqliteTimeouts(100, 1.1)),
    ("sqlite:///x.db?busy_timeout=100&timeout=0.5", {}, SqliteTimeouts(100, 0.5)),
    ("sqlite:///x.db", {"busy_ms": 500, "timeout_s": 1.0}, SqliteTimeouts(500, 1.0)),
    ("sqlite:///x.db", {"busy_ms": 10_000, "bounded": False}, SqliteTimeouts(10_000, None)),
    ("sqlite:///x.db?timeout=4", {"busy_ms": 10_000, "bounded": False},
     SqliteTimeouts(10_000, 4.0)),
])
def test_one_timeout_policy(url: str, kwargs: dict[str, Any], expected: SqliteTimeouts) -> None:
    assert SqliteFile.from_url(url, "test store", **kwargs).timeouts == expected


@pytest.mark.parametrize("url", ["sqlite:///x.db?busy_timeout=-1", "sqlite:///x.db?timeout=abc",
                                 "sqlite:///x.db?journal=off"])
def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(StoreConfigError):
        SqliteFile.from_url(url, "test store")


async def test_errors_of_the_file_become_unavailable_and_refusals_pass(tmp_path: Path) -> None:
    db = SqliteFile(str(tmp_path / "t.db"), "test store", SqliteTimeouts(100, 2.0),
                    setup=lambda conn: conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    await db.run(lambda conn: conn.execute("INSERT INTO t VALUES ('a')"))
    with pytest.raises(sqlite3.IntegrityError):  # the data's fault: kept as it is
        await db.run(lambda conn: conn.execute("INSERT INTO t VALUES ('a')"))
    with pytest.raises(StoreUnavailable, match="test store") as info:
        await db.run(lambda conn: conn.execute("SELECT * FROM missing"))
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    await db.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await db.run(lambda conn: None)


async def test_a_held_lock_costs_the_call_timeout_not_more(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db = database_from_url(f"sqlite:///{path}?busy_timeout=100&timeout=0.5")
    await db.open()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await db.insert_ledger([LedgerRow(id="r1", ts=1.0)])
        assert time.monotonic() - started < 1.5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await db.insert_ledger([LedgerRow(id="r1", ts=1.0)])
    assert [row.id for row in await db.ledger_rows()] == ["r1"]
    await db.close()


async def test_group_commit_rolls_back_only_the_call_that_failed(tmp_path: Path) -> None:
    commits: list[int] = []
    gate = threading.Event()
    db: SqliteFile

    def count(conn: sqlite3.Connection) -> None:
        commits.append(len(conn.execute("SELECT k FROM t").fetchall()))

    db = SqliteFile(str(tmp_path / "g.db"), "test store", SqliteTimeouts(1000, 5.0),
                    setup=lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"),
                    group_commit=True, before_commit=count)
    await db.run(lambda conn: None)
    blocker = asyncio.ensure_future(db.run(lambda conn: gate.wait(5)))  # holds the thread

    def insert(k: int) -> Callable[[sqlite3.Connection], int]:
        def work(conn: sqlite3.Connection) -> int:
            return db.write(conn, lambda: conn.execute("INSERT INTO t VALUES (?)", (k,)).rowcount)
        return work

    def fail(conn: sqlite3.Connection) -> None:
        def txn() -> None:
            conn.execute("INSERT INTO t VALUES (99)")
            raise RuntimeError("this call fails")
        db.write(conn, txn)

    await asyncio.sleep(0.05)
    queued = [db.run(insert(1)), db.run(fail), db.run(insert(2))]
    tasks = [asyncio.ensure_future(call) for call in queued]
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    one, failed, two = await asyncio.gather(*tasks, return_exceptions=True)
    assert (one, two) == (1, 1) and isinstance(failed, RuntimeError)
    assert commits == [2]  # one transaction for the three calls, without the failed one
    assert await db.run(lambda conn: conn.execute("SELECT k FROM t ORDER BY k").fetchall()) \
        == [(1,), (2,)]
    await db.close()


def blocked_url(tmp_path: Path) -> str:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    return f"sqlite:///{blocker}/store.db"


async def test_every_sqlite_store_reports_an_unusable_file_as_unavailable(tmp_path: Path) -> None:
    url = blocked_url(tmp_path)
    counters = counter_store_from_url(url)
    cache = response_cache_from_url(url)
    db = database_from_url(url)
    history = history_from_url(url)
    spool = LedgerSpool(Path(url[len("sqlite:///"):]))
    calls: list[Callable[[], Any]] = [
        counters.ping, lambda: cache.get("k"), db.open, history.open,
        lambda: history.record(Alert(kind="k", severity="info", title="t", message="m",
                                     dedupe_key="d", data={}, ts=1.0)),
        lambda: spool.append([LedgerRow(id="r", ts=1.0)])]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call()
    for store in (counters, cache, db, history, spool):
        await store.close()


async def test_every_sqlite_store_writes_ahead(tmp_path: Path) -> None:
    made = [counter_store_from_url(f"sqlite:///{tmp_path}/counters.db"),
            response_cache_from_url(f"sqlite:///{tmp_path}/cache.db"),
            database_from_url(f"sqlite:///{tmp_path}/ledger.db"),
            history_from_url(f"sqlite:///{tmp_path}/alerts.db")]
    await made[0].read(["k"])
    await made[1].get("k")
    await made[2].open()
    await made[3].open()
    spool = LedgerSpool(tmp_path / "ledger.spool")
    await spool.append([LedgerRow(id="r", ts=1.0)])
    for name in ("counters.db", "cache.db", "ledger.db", "alerts.db", "ledger.spool"):
        with sqlite3.connect(tmp_path / name) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",), name
    for store in (*made, spool):
        await store.close()


async def test_closing_an_unused_file_starts_no_thread(tmp_path: Path) -> None:
    db = database_from_url(f"sqlite:///{tmp_path}/never.db")
    await db.close()
    assert not any(t.name == "ts-db:never.db" for t in threading.enumerate())
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_one_registry_names_every_backend(kind: str) -> None:
    with pytest.raises(StoreConfigError, match="expected one of") as info:
        backend_class(kind, "mysql://app:s3cret@db.internal/x")
    assert "s3cret" not in str(info.value) and kind in str(info.value)
    for scheme, target in BACKENDS[kind].items():
        cls = backend_class(kind, f"{scheme}://whatever")
        assert f"{cls.__module__}:{cls.__name__}" == target


async def test_files_opened_together_for_the_first_time_all_open(tmp_path: Path) -> None:
    # Switching a new file to WAL while other connections open it can answer "database is
    # locked" at once, past the busy timeout: each opener waits for the lock instead.
    for round_ in range(40):
        path = str(tmp_path / f"new{round_}.db")
        files = [SqliteFile(path, "test file", SqliteTimeouts(2000, 5.0),
                            setup=lambda conn: conn.execute(
                                "CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
                 for _ in range(8)]
        try:
            opened = await asyncio.gather(*(f.run(lambda conn: conn.execute(
                "PRAGMA journal_mode").fetchone()[0]) for f in files))
            assert opened == ["wal"] * 8
        finally:
            await asyncio.gather(*(f.close() for f in files))
