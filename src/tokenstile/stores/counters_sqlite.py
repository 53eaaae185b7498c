"""``sqlite:///path``: durable counters in one file, shared by the processes of one machine.

Each operation is one short transaction. ``BEGIN IMMEDIATE`` takes the database's write lock
before reading, so reserve's check-then-add cannot interleave with another process doing the
same (WAL lets readers carry on meanwhile); ``busy_timeout`` makes a writer wait for the lock
instead of failing. ``synchronous=NORMAL`` in WAL mode skips the fsync per commit: a power
cut may lose the last commits, never corrupt the file, and the ledger stays the source of
truth.

Every call runs on the store's one thread (``stores/sqlite.py``); calls that queue up while
it is busy share one transaction (group commit).

URL options: ``busy_timeout`` (milliseconds to wait for the write lock, default 2000) and
``timeout`` (seconds before a call gives up with StoreUnavailable, default busy_timeout + 1).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

import orjson

from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.stores.counters import (
    Charge,
    ExpiredReservation,
    ReserveOutcome,
    merge_deltas,
    plan_reservation,
)
from tokenstile.stores.pacing import Lane, PaceOutcome, pace_step
from tokenstile.stores.sqlite import SqliteFile

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
CREATE TABLE IF NOT EXISTS pacing (
    lane TEXT PRIMARY KEY,
    state BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

_UPSERT = (
    "INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


class SqliteCounterStore:
    """Counters in the ``counters`` table, reservations in ``reservations``."""

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self._clock = clock or SYSTEM_CLOCK
        self._file = SqliteFile.from_url(url, "counter store", shared=True, setup=self._setup,
                                         group_commit=True, before_commit=self._maybe_purge,
                                         thread="ts-counters")
        self.path = self._file.path
        self._next_purge = 0.0

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._file.run(fn)

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)
        self._next_purge = self._clock.now() + _PURGE_EVERY_S

    def _write(self, conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        """Run ``fn`` inside one write transaction (which now and then also purges expired
        counters, while it holds the lock anyway); inside a batch, in the batch's."""
        return self._file.write(conn, fn)

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
        conn.execute("DELETE FROM pacing WHERE expires_at <= ?", (now,))

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

    @staticmethod
    def _mark(conn: sqlite3.Connection, markers: Sequence[tuple[str, int | None, int]],
              live: dict[str, tuple[int, float | None]], now: float) -> None:
        """Write first-seen markers that are missing; move the expiry of all of them later."""
        rows = []
        for key, value, ttl in markers:
            current, expires = live.get(key, (0, None))
            rows.append((key, current if value is None else value,
                         max(expires or 0.0, now + ttl)))
        if rows:
            conn.executemany(_UPSERT, rows)

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
                used, failed, limits = plan.judge(values)
                if failed:
                    held = conn.execute("SELECT 1 FROM reservations WHERE rid = ?", (rid,))
                    if held.fetchone() is not None:
                        return plan.already_held(values)
                    self._mark(conn, plan.markers(values), live, now)
                    return ReserveOutcome(admitted=False, used=used, failed=failed,
                                          limits=limits)
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO reservations (rid, deltas, record, lease_until) "
                    "VALUES (?, ?, ?, ?)",
                    (rid, deltas_json, bytes(record), lease_until),
                )
                if inserted.rowcount == 0:
                    return plan.already_held(values)
                self._mark(conn, plan.markers(values), live, now)
                conn.executemany(_UPSERT, self._increments(live, writes, now))
                return ReserveOutcome(admitted=True, used=used, limits=limits)

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

    async def pace(self, lane: str, now: float, reduction: float | None, max_wait_s: float,
                   ttl: int) -> PaceOutcome:
        def work(conn: sqlite3.Connection) -> PaceOutcome:
            def txn() -> PaceOutcome:
                clock_now = self._clock.now()
                row = conn.execute(
                    "SELECT state FROM pacing WHERE lane = ? AND expires_at > ?",
                    (lane, clock_now)).fetchone()
                state = Lane.from_json(row[0]) if row is not None else Lane()
                outcome = pace_step(state, now, reduction, max_wait_s)
                conn.execute(
                    "INSERT INTO pacing (lane, state, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (lane) DO UPDATE SET state = excluded.state, "
                    "expires_at = excluded.expires_at",
                    (lane, state.to_json(), clock_now + ttl))
                return outcome

            return self._write(conn, txn)

        return await self._run(work)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await self._file.close()
