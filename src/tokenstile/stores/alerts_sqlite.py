"""``sqlite:///path``: the ``alerts`` table in the ledger's SQLite file, on one worker thread.

Every process of one machine shares the file, so a key recorded by one worker is known to
all, and to the next start. URL options as the database's (``busy_timeout``, ``timeout``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict

import orjson

from tokenstile.alerts.rules import Alert
from tokenstile.stores.alerts import (
    ALERT_COLUMNS,
    AlertRecord,
    Delivery,
    new_alert_id,
    record_from_row,
)
from tokenstile.stores.newest import newest_first, sqlite_mark
from tokenstile.stores.sqlite import SqliteTableStore, immediate

ALERTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
    title TEXT NOT NULL, message TEXT NOT NULL, dedupe_key TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL, deliveries TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
"""


class SqliteAlertHistory(SqliteTableStore):
    def __init__(self, url: str) -> None:
        super().__init__(url, "alert history", lambda conn: conn.executescript(ALERTS_SCHEMA),
                         "ts-alerts")

    async def record(self, alert: Alert) -> AlertRecord:
        values = (new_alert_id(), alert.ts, alert.kind, alert.severity, alert.title,
                  alert.message, alert.dedupe_key,
                  orjson.dumps(alert.data, default=str).decode(), "[]")

        def write(conn: sqlite3.Connection) -> AlertRecord:
            with immediate(conn):
                cur = conn.execute(f"INSERT OR IGNORE INTO alerts ({ALERT_COLUMNS}) "
                                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
                inserted = cur.rowcount == 1
                row = conn.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE dedupe_key = ?",
                                   (alert.dedupe_key,)).fetchone()
            return record_from_row(row, new=inserted)

        return await self._file.run(write)

    async def add_delivery(self, dedupe_key: str, delivery: Delivery) -> None:
        item = orjson.dumps(asdict(delivery)).decode()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE alerts SET deliveries = json_insert(deliveries, '$[#]', "
                         "json(?)) WHERE dedupe_key = ?", (item, dedupe_key))

        await self._file.run(write)

    async def get(self, dedupe_key: str) -> AlertRecord | None:
        def read(conn: sqlite3.Connection) -> AlertRecord | None:
            row = conn.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE dedupe_key = ?",
                               (dedupe_key,)).fetchone()
            return None if row is None else record_from_row(row)

        return await self._file.run(read)

    async def recent(self, limit: int = 50, since: float | None = None) -> list[AlertRecord]:
        sql, args = newest_first(f"SELECT {ALERT_COLUMNS} FROM alerts", "ts >=", since, limit,
                                 sqlite_mark)

        def read(conn: sqlite3.Connection) -> list[AlertRecord]:
            return [record_from_row(r) for r in conn.execute(sql, args)]

        return await self._file.run(read)

    async def prune(self, before: float) -> int:
        """Forget alerts older than ``before``; their keys may then fire again."""
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM alerts WHERE ts < ?", (before,)).rowcount

        return await self._file.run(write)
