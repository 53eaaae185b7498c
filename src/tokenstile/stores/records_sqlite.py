"""``sqlite:///path``: reconciliation runs and recorded prices in the ledger's SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from tokenstile.stores.db_sqlite import SCHEMA, add_columns
from tokenstile.stores.newest import newest_first, sqlite_mark
from tokenstile.stores.records import (
    RUN_COLUMNS,
    LedgerDay,
    PriceRecord,
    ReconcileRun,
    run_from_row,
)
from tokenstile.stores.sqlite import SqliteTableStore, immediate

RECORDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS reconcile_runs (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, provider TEXT NOT NULL, since REAL NOT NULL,
    until REAL NOT NULL, ledger_nano INTEGER NOT NULL, provider_nano INTEGER NOT NULL,
    drift_nano INTEGER NOT NULL, ledger_tokens INTEGER NOT NULL,
    provider_tokens INTEGER NOT NULL, drift_tokens INTEGER NOT NULL,
    alerted INTEGER NOT NULL DEFAULT 0, rows TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reconcile_runs_ts ON reconcile_runs (provider, ts);
CREATE TABLE IF NOT EXISTS price_records (
    model TEXT NOT NULL, provider TEXT NOT NULL, fingerprint TEXT NOT NULL,
    recorded_at REAL NOT NULL, PRIMARY KEY (model, provider)
);
"""

# One UTC day per group: whole days since the epoch.
LEDGER_DAYS_SQL = """
SELECT CAST(ts / 86400 AS INTEGER) AS day, coalesce(served_model, requested_model, '') AS model,
       count(*), sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens),
       sum(output_tokens), sum(cost_nano)
FROM ledger
WHERE {ts} >= ? AND {ts} < ? AND upstream IN ({marks}) AND (cache IS NULL OR cache != 'hit')
GROUP BY day, model
ORDER BY day, model
"""
# A window that holds more than this share of the ledger's time span is read by scanning
# the table (about twice as fast as a million lookups through the ts index); a narrower
# one through the index.
SCAN_SHARE = 0.3


def _ts_column(conn: sqlite3.Connection, since: float, until: float) -> str:
    """``ts`` (use the index) or ``+ts`` (the same values, no index: a table scan)."""
    first, last = conn.execute("SELECT min(ts), max(ts) FROM ledger").fetchone()
    if first is None or last <= first:
        return "ts"
    covered = min(until, last) - max(since, first)
    return "+ts" if covered / (last - first) > SCAN_SHARE else "ts"


def _setup(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    add_columns(conn)
    conn.executescript(RECORDS_SCHEMA)


class SqliteRecordStore(SqliteTableStore):
    def __init__(self, url: str) -> None:
        super().__init__(url, "record store", _setup, "ts-records")

    async def ledger_days(self, since: float, until: float,
                          upstreams: Sequence[str]) -> list[LedgerDay]:
        names = list(dict.fromkeys(upstreams))
        if not names:
            return []
        marks = ",".join("?" * len(names))

        def read(conn: sqlite3.Connection) -> list[LedgerDay]:
            sql = LEDGER_DAYS_SQL.format(marks=marks, ts=_ts_column(conn, since, until))
            return [LedgerDay(int(row[0]), str(row[1]), *(int(v or 0) for v in row[2:]))
                    for row in conn.execute(sql, (since, until, *names))]

        return await self._file.run(read)

    async def save_run(self, run: ReconcileRun) -> None:
        values = (run.id, run.ts, run.provider, run.since, run.until, run.ledger_nano,
                  run.provider_nano, run.drift_nano, run.ledger_tokens, run.provider_tokens,
                  run.drift_tokens, int(run.alerted), orjson.dumps(run.rows).decode())

        def write(conn: sqlite3.Connection) -> None:
            with immediate(conn):
                conn.execute(f"INSERT INTO reconcile_runs ({RUN_COLUMNS}) "
                             f"VALUES ({','.join('?' * 13)})", values)

        await self._file.run(write)

    async def runs(self, limit: int = 50, provider: str | None = None) -> list[ReconcileRun]:
        sql, args = newest_first(f"SELECT {RUN_COLUMNS} FROM reconcile_runs", "provider =",
                                 provider, limit, sqlite_mark)

        def read(conn: sqlite3.Connection) -> list[ReconcileRun]:
            return [run_from_row(r, orjson.loads(r[12])) for r in conn.execute(sql, args)]

        return await self._file.run(read)

    async def latest_runs(self) -> list[ReconcileRun]:
        sql = (f"SELECT {RUN_COLUMNS} FROM reconcile_runs AS r WHERE id = (SELECT id FROM "
               "reconcile_runs WHERE provider = r.provider ORDER BY ts DESC, id DESC LIMIT 1) "
               "ORDER BY provider")

        def read(conn: sqlite3.Connection) -> list[ReconcileRun]:
            return [run_from_row(r, orjson.loads(r[12])) for r in conn.execute(sql)]

        return await self._file.run(read)

    async def prices(self) -> list[PriceRecord]:
        def read(conn: sqlite3.Connection) -> list[PriceRecord]:
            return [PriceRecord(*r) for r in conn.execute(
                "SELECT model, provider, fingerprint, recorded_at FROM price_records "
                "ORDER BY model, provider")]

        return await self._file.run(read)

    async def save_prices(self, records: Sequence[PriceRecord]) -> None:
        values = [(r.model, r.provider, r.fingerprint, r.recorded_at) for r in records]

        def write(conn: sqlite3.Connection) -> None:
            with immediate(conn):
                conn.executemany(
                    "INSERT INTO price_records (model, provider, fingerprint, recorded_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (model, provider) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, recorded_at = excluded.recorded_at",
                    values)

        if values:
            await self._file.run(write)
