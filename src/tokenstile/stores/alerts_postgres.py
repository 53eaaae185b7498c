"""Alert history in PostgreSQL: dedupe keys shared by every gateway of a deployment.

The same behaviour as ``alerts_sqlite`` (the first process to record a key delivers
it; later ones see it as known), on the ``alerts`` table the PostgreSQL migrations create.
It keeps a small pool of its own (``PostgresTableStore``).
"""

from __future__ import annotations

from dataclasses import asdict

from tokenstile.alerts.rules import Alert
from tokenstile.stores.alerts import (
    ALERT_COLUMNS,
    AlertRecord,
    Delivery,
    json_data,
    new_alert_id,
    record_from_row,
)
from tokenstile.stores.db_postgres import PostgresTableStore, clean_text, json_text
from tokenstile.stores.newest import newest_first, postgres_mark


class PostgresAlertHistory(PostgresTableStore):
    async def record(self, alert: Alert) -> AlertRecord:
        """Insert unless the dedupe key is known; one statement, so two gateways racing
        on the same key cannot both see it as new."""
        data = json_data(alert)
        async with self._db.connection() as conn:
            inserted = await conn.fetchrow(
                f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
                f"'[]'::jsonb) ON CONFLICT (dedupe_key) DO NOTHING RETURNING {ALERT_COLUMNS}",
                new_alert_id(), float(alert.ts), clean_text(alert.kind), clean_text(alert.severity),
                clean_text(alert.title), clean_text(alert.message), clean_text(alert.dedupe_key),
                json_text(data))
            if inserted is not None:
                return record_from_row(inserted, new=True)
            row = await conn.fetchrow(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE dedupe_key = $1",
                                      clean_text(alert.dedupe_key))
        assert row is not None  # unique keys are never deleted except by prune
        return record_from_row(row)

    async def add_delivery(self, dedupe_key: str, delivery: Delivery) -> None:
        async with self._db.connection() as conn:
            await conn.execute("UPDATE alerts SET deliveries = deliveries || "
                               "jsonb_build_array($1::jsonb) WHERE dedupe_key = $2",
                               json_text(asdict(delivery)), clean_text(dedupe_key))

    async def get(self, dedupe_key: str) -> AlertRecord | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE dedupe_key = $1",
                                      clean_text(dedupe_key))
        return None if row is None else record_from_row(row)

    async def recent(self, limit: int = 50, since: float | None = None) -> list[AlertRecord]:
        sql, args = newest_first(f"SELECT {ALERT_COLUMNS} FROM alerts", "ts >=",
                                 None if since is None else float(since), limit, postgres_mark)
        async with self._db.connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [record_from_row(r) for r in rows]

    async def prune(self, before: float) -> int:
        """Forget alerts older than ``before``; their keys may then fire again."""
        async with self._db.connection() as conn:
            status = await conn.execute("DELETE FROM alerts WHERE ts < $1", float(before))
        return int(status.split()[-1])
