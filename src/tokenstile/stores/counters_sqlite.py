"""``sqlite:///path``: durable counters in one file, shared by the processes of one machine.

Each operation is one short transaction. ``BEGIN IMMEDIATE`` takes the database's write lock
before reading, so reserve's check-then-add cannot interleave with another process doing the
same (WAL lets readers carry on meanwhile); ``busy_timeout`` makes a writer wait for the lock
instead of failing. ``synchronous=NORMAL`` in WAL mode skips the fsync per commit: a power
cut may lose the last commits, never corrupt the file, and the ledger stays the source of
truth.

The stdlib driver blocks, so every call runs on one dedicated thread per store, in order;
the event loop only waits on a future. (A bare thread and queue rather than a
ThreadPoolExecutor: the hand-off costs half as much, and that is most of an admission.)

URL options: ``busy_timeout`` (milliseconds to wait for the write lock, default 2000) and
``timeout`` (seconds before a call gives up with StoreUnavailable, default busy_timeout + 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.stores.counters import (
    Charge,
    ExpiredReservation,
    ReserveOutcome,
    StoreConfigError,
    StoreUnavailable,
    merge_deltas,
    option_number,
    plan_reservation,
    url_options,
)

T = TypeVar("T")

_PURGE_EVERY_S = 60.0
_PURGE_BATCH = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    rid TEXT PRIMARY KEY,
    deltas TEXT NOT NULL,
    record BLOB NOT NULL,
    lease_until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_lease ON reservations (lease_until);
"""

_UPSERT = (
    "INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)


def sqlite_counter_path(url: str) -> str:
    """``sqlite:///./x.db`` → ``./x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise StoreConfigError(f"expected sqlite:///path for the counter store, got {url!r}")
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path or path.endswith("/"):
        raise StoreConfigError(f"the SQLite URL {url!r} names no file")
    if ":memory:" in path or "mode=memory" in url:
        raise StoreConfigError(
            "the SQLite counter store needs a file so that processes can share it; "
            "use memory:// for counters private to one process"
        )
    return path


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _resolve(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)


Outcome = tuple[Any, BaseException | None]
BatchRunner = Callable[[list[Callable[[], Any]]], list[Outcome]]
MAX_BATCH = 64


class _Worker:
    """One thread that runs a store's calls one after another.

    With a ``batch_runner``, calls that queued up while the thread was busy are handed over
    together (up to ``MAX_BATCH``), so a store can run them in one transaction: under
    concurrency, one commit serves many admissions (group commit).
    """

    def __init__(self, name: str, batch_runner: BatchRunner | None = None) -> None:
        self._queue: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._batch_runner = batch_runner
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if not self._thread.is_alive():
            self._thread.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, fut, fn))
        return fut

    def stop(self) -> None:
        self._queue.put(None)

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH and self._batch_runner is not None:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            # the caller gave up (timed out) before it started: skip it
            live = [entry for entry in batch if not entry[1].cancelled()]
            if not live:
                continue
            if len(live) > 1 and self._batch_runner is not None:
                outcomes = self._batch_runner([fn for _, _, fn in live])
            else:
                outcomes = [_outcome(live[0][2])]
            for (loop, fut, _), (result, error) in zip(live, outcomes, strict=True):
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                    loop.call_soon_threadsafe(_resolve, fut, result, error)


def _outcome(fn: Callable[[], Any]) -> Outcome:
    try:
        return fn(), None
    except BaseException as exc:
        return None, exc


class SqliteCounterStore:
    """Counters in the ``counters`` table, reservations in ``reservations``."""

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.path = sqlite_counter_path(url)
        options = url_options(url, ("busy_timeout", "timeout"), "counter store")
        self._busy_ms = int(option_number(options, "busy_timeout", 2000.0))
        self._timeout = option_number(options, "timeout", self._busy_ms / 1000 + 1.0)
        self._clock = clock or SYSTEM_CLOCK
        self._worker = _Worker(f"ts-counters:{os.path.basename(self.path)}",
                               batch_runner=self._run_batch)
        self._in_batch = False
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only
        self._next_purge = 0.0
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable(f"the SQLite counter store {self.path} is closed")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._worker.submit(lambda: self._call(fn))
        except TimeoutError:
            raise StoreUnavailable(
                f"the SQLite counter store {self.path} did not answer within {self._timeout} s"
            ) from None

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._open() if self._conn is None else self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"SQLite counter store {self.path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self._busy_ms / 1000, isolation_level=None, cached_statements=256
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        self._conn = conn
        self._next_purge = self._clock.now() + _PURGE_EVERY_S
        return conn

    def _run_batch(self, fns: list[Callable[[], Any]]) -> list[Outcome]:
        """Calls that queued up together, in one write transaction: each in a savepoint of
        its own, so one that fails is rolled back alone and the others still commit."""
        try:
            conn = self._open() if self._conn is None else self._conn
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            unavailable = StoreUnavailable(f"SQLite counter store {self.path}: {exc}")
            return [(None, unavailable) for _ in fns]
        outcomes: list[Outcome] = []
        self._in_batch = True
        try:
            for fn in fns:
                conn.execute("SAVEPOINT op")
                result, error = _outcome(fn)
                conn.execute("ROLLBACK TO op" if error is not None else "RELEASE op")
                if error is not None:
                    conn.execute("RELEASE op")
                outcomes.append((result, error))
            self._maybe_purge(conn)
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            failed = StoreUnavailable(f"SQLite counter store {self.path}: {exc}")
            return [(None, failed) for _ in fns]
        finally:
            self._in_batch = False
        return outcomes

    def _write(self, conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        """Run ``fn`` inside one write transaction (which now and then also purges expired
        counters, while it holds the lock anyway); inside a batch, in the batch's."""
        if self._in_batch:
            return fn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn()
            self._maybe_purge(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # keep the original error
                    conn.execute("ROLLBACK")
            raise
        return result

    def _maybe_purge(self, conn: sqlite3.Connection) -> None:
        now = self._clock.now()
        if now < self._next_purge:
            return
        self._next_purge = now + _PURGE_EVERY_S
        conn.execute(
            "DELETE FROM counters WHERE key IN "
            "(SELECT key FROM counters WHERE expires_at <= ? LIMIT ?)",
            (now, _PURGE_BATCH),
        )

    @staticmethod
    def _live_rows(
        conn: sqlite3.Connection, keys: Sequence[str], now: float
    ) -> dict[str, tuple[int, float | None]]:
        """Unexpired ``key -> (value, expires_at)`` for the keys that exist."""
        marks = _placeholders(len(keys))
        rows = conn.execute(
            f"SELECT key, value, expires_at FROM counters WHERE key IN ({marks})", tuple(keys)
        ).fetchall()
        return {k: (v, e) for k, v, e in rows if e is None or e > now}

    @staticmethod
    def _increments(
        live: dict[str, tuple[int, float | None]],
        writes: Sequence[tuple[str, int, int]],
        now: float,
    ) -> list[tuple[str, int, float | None]]:
        """Rows to upsert for (key, amount, ttl) increments; expiry only ever moves later."""
        rows = []
        for key, amount, ttl in writes:
            value, expires = live.get(key, (0, None))
            if ttl > 0:
                expires = max(expires or 0.0, now + ttl)
            rows.append((key, value + amount, expires))
        return rows

    # -- the contract -----------------------------------------------------------------------

    async def reserve(
        self, rid: str, charges: Sequence[Charge], lease_until: float, record: bytes
    ) -> ReserveOutcome:
        plan = plan_reservation(charges)
        deltas_json = orjson.dumps(plan.deltas)
        writes = [
            (key, amount, ttl) for key, (amount, ttl) in zip(plan.keys, plan.writes, strict=False)
        ]

        def work(conn: sqlite3.Connection) -> ReserveOutcome:
            def txn() -> ReserveOutcome:
                now = self._clock.now()
                live = self._live_rows(conn, plan.keys, now)
                values = [live.get(key, (0, None))[0] for key in plan.keys]
                used, failed = plan.evaluate(values)
                if failed:
                    held = conn.execute("SELECT 1 FROM reservations WHERE rid = ?", (rid,))
                    if held.fetchone() is not None:
                        return plan.already_held(values)
                    return ReserveOutcome(admitted=False, used=used, failed=failed)
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO reservations (rid, deltas, record, lease_until) "
                    "VALUES (?, ?, ?, ?)",
                    (rid, deltas_json, bytes(record), lease_until),
                )
                if inserted.rowcount == 0:
                    return plan.already_held(values)
                conn.executemany(_UPSERT, self._increments(live, writes, now))
                return ReserveOutcome(admitted=True, used=used)

            return self._write(conn, txn)

        return await self._run(work)

    async def settle(self, rid: str, deltas: Sequence[tuple[str, int]]) -> bool:
        changes = [(d, key) for key, d in merge_deltas(deltas).items() if d != 0]

        def work(conn: sqlite3.Connection) -> bool:
            def txn() -> bool:
                gone = conn.execute("DELETE FROM reservations WHERE rid = ?", (rid,))
                if gone.rowcount == 0:
                    return False
                now = self._clock.now()
                conn.executemany(
                    "UPDATE counters SET value = max(0, value + ?) "
                    "WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                    [(d, key, now) for d, key in changes],
                )
                return True

            return self._write(conn, txn)

        return await self._run(work)

    async def renew(self, rids: Sequence[str], lease_until: float) -> None:
        if not rids:
            return
        rows = [(lease_until, rid) for rid in rids]

        def work(conn: sqlite3.Connection) -> None:
            def txn() -> None:
                conn.executemany(
                    "UPDATE reservations SET lease_until = max(lease_until, ?) WHERE rid = ?",
                    rows,
                )

            self._write(conn, txn)

        await self._run(work)

    async def claim_expired(self, now: float, limit: int = 100) -> list[ExpiredReservation]:
        query = (
            "SELECT rid, deltas, record FROM reservations WHERE lease_until < ? "
            "ORDER BY lease_until LIMIT ?"
        )

        def work(conn: sqlite3.Connection) -> list[ExpiredReservation]:
            # Usually there is nothing to claim: look without taking the write lock first.
            if conn.execute(query, (now, 1)).fetchone() is None:
                return []

            def txn() -> list[ExpiredReservation]:
                rows = conn.execute(query, (now, max(0, limit))).fetchall()
                conn.executemany(
                    "DELETE FROM reservations WHERE rid = ?", [(row[0],) for row in rows]
                )
                return [
                    ExpiredReservation(
                        rid, bytes(record), tuple((k, int(a)) for k, a in orjson.loads(deltas))
                    )
                    for rid, deltas, record in rows
                ]

            return self._write(conn, txn)

        return await self._run(work)

    async def add(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        merged: dict[str, tuple[int, int]] = {}
        for key, amount, ttl in deltas:
            total, longest = merged.get(key, (0, 0))
            merged[key] = (total + amount, max(longest, ttl))
        if not merged:
            return
        writes = [(key, amount, ttl) for key, (amount, ttl) in merged.items()]

        def work(conn: sqlite3.Connection) -> None:
            def txn() -> None:
                now = self._clock.now()
                live = self._live_rows(conn, list(merged), now)
                conn.executemany(_UPSERT, self._increments(live, writes, now))

            self._write(conn, txn)

        await self._run(work)

    async def read(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []

        def work(conn: sqlite3.Connection) -> list[int]:
            live = self._live_rows(conn, keys, self._clock.now())
            return [live.get(key, (0, None))[0] for key in keys]

        return await self._run(work)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            async with asyncio.timeout(self._timeout):
                await self._worker.submit(shut)
        except TimeoutError:
            pass
        finally:
            self._worker.stop()
