"""Reconciliation runs and recorded prices in PostgreSQL, on the tables migration 7 makes.

A small pool of its own, like the alert history (``PostgresTableStore``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tokenstile.stores.db_postgres import PostgresTableStore, clean_text, json_text
from tokenstile.stores.newest import newest_first, postgres_mark
from tokenstile.stores.records import (
    RUN_COLUMNS,
    LedgerDay,
    PriceRecord,
    ReconcileRun,
    run_from_row,
)

# One UTC day per group: whole days since the epoch.
LEDGER_DAYS_SQL = """
SELECT floor(ts / 86400)::bigint AS day, coalesce(served_model, requested_model, '') AS model,
       count(*), coalesce(sum(input_tokens), 0), coalesce(sum(cached_input_tokens), 0),
       coalesce(sum(cache_write_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(cost_nano), 0)
FROM ledger
WHERE ts >= $1 AND ts < $2 AND upstream = ANY($3::text[]) AND cache IS DISTINCT FROM 'hit'
GROUP BY 1, 2
ORDER BY 1, 2
"""


def _rows(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        loaded = orjson.loads(value)
        return loaded if isinstance(loaded, list) else []
    return list(value or [])


class PostgresRecordStore(PostgresTableStore):
    async def ledger_days(self, since: float, until: float,
                          upstreams: Sequence[str]) -> list[LedgerDay]:
        names = list(dict.fromkeys(upstreams))
        if not names:
            return []
        async with self._db.connection() as conn:
            rows = await conn.fetch(LEDGER_DAYS_SQL, float(since), float(until), names)
        return [LedgerDay(int(r[0]), r[1], *(int(v) for v in tuple(r)[2:])) for r in rows]

    async def save_run(self, run: ReconcileRun) -> None:
        async with self._db.connection() as conn:
            await conn.execute(
                f"INSERT INTO reconcile_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, "
                "$7, $8, $9, $10, $11, $12, $13::jsonb)",
                run.id, float(run.ts), clean_text(run.provider), float(run.since),
                float(run.until), run.ledger_nano, run.provider_nano, run.drift_nano,
                run.ledger_tokens, run.provider_tokens, run.drift_tokens, run.alerted,
                json_text(run.rows))

    async def runs(self, limit: int = 50, provider: str | None = None) -> list[ReconcileRun]:
        sql, args = newest_first(f"SELECT {RUN_COLUMNS} FROM reconcile_runs", "provider =",
                                 None if provider is None else clean_text(provider), limit,
                                 postgres_mark)
        async with self._db.connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [run_from_row(tuple(r), _rows(r["rows"])) for r in rows]

    async def latest_runs(self) -> list[ReconcileRun]:
        sql = (f"SELECT DISTINCT ON (provider) {RUN_COLUMNS} FROM reconcile_runs "
               "ORDER BY provider, ts DESC, id DESC")
        async with self._db.connection() as conn:
            rows = await conn.fetch(sql)
        return [run_from_row(tuple(r), _rows(r["rows"])) for r in rows]

    async def prices(self) -> list[PriceRecord]:
        async with self._db.connection() as conn:
            rows = await conn.fetch("SELECT model, provider, fingerprint, recorded_at "
                                    "FROM price_records ORDER BY model, provider")
        return [PriceRecord(r[0], r[1], r[2], float(r[3])) for r in rows]

    async def save_prices(self, records: Sequence[PriceRecord]) -> None:
        if not records:
            return
        async with self._db.connection() as conn:
            await conn.executemany(
                "INSERT INTO price_records (model, provider, fingerprint, recorded_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (model, provider) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, recorded_at = excluded.recorded_at",
                [(clean_text(r.model), clean_text(r.provider), clean_text(r.fingerprint),
                  float(r.recorded_at)) for r in records])
