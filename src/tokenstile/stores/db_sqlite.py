"""The default database: one SQLite file (WAL), all statements on one worker thread.

URL options: ``busy_timeout`` (milliseconds a writer waits for the lock, default 10000) and
``timeout`` (seconds before a call gives up with StoreUnavailable; by default a call takes
as long as it needs: a rollup filled at open, a month of ledger read).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from tokenstile.stores import responses
from tokenstile.stores.database import (
    GROUPABLE,
    KEY_COLUMNS,
    LEDGER_COLUMNS,
    KeyLookups,
    KeyRecord,
    Override,
    UsageQuery,
    run_items,
    runs_sql,
)
from tokenstile.stores.responses import StoredResponse
from tokenstile.stores.sqlite import SqliteFile
from tokenstile.stores.usage_sqlite import (
    LABELS,
    add_to_rollup,
    bucket_label,
    ensure_rollup,
    hour_bucket,
    new_rows,
    remove_from_rollup,
    usage_from,
)
from tokenstile.types import LedgerRow

T = TypeVar("T")

# Ledger columns added after the first release: a database made before them gets them
# when it is opened (existing rows read 0 and NULL).
ADDED_COLUMNS = (
    ("input_audio_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("output_audio_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("cache_write_1h_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("web_search_requests", "INTEGER NOT NULL DEFAULT 0"),
    ("file_search_calls", "INTEGER NOT NULL DEFAULT 0"),
    ("service_tier", "TEXT"),
    ("run_id", "TEXT"),
)
# Indexes on added columns, made once the columns are there.
ADDED_INDEXES = """
CREATE INDEX IF NOT EXISTS ledger_run ON ledger (run_id, ts) WHERE run_id IS NOT NULL;
"""
_JSON_COLUMNS = {"tags", "flags", "degraded", "detail"}
_BOOL_COLUMNS = {"estimated", "streamed"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, key_id TEXT, organization TEXT, project TEXT,
    team TEXT, user TEXT, end_user TEXT, feature TEXT, tags TEXT, api TEXT,
    requested_model TEXT, served_model TEXT, upstream TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0, cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0, cost_nano INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0, status INTEGER NOT NULL, outcome TEXT NOT NULL,
    block_reason TEXT, flags TEXT, latency_ms REAL, ttfb_ms REAL,
    streamed INTEGER NOT NULL DEFAULT 0, trace_id TEXT, degraded TEXT, cache TEXT,
    saved_nano INTEGER NOT NULL DEFAULT 0, detail TEXT,
    input_audio_tokens INTEGER NOT NULL DEFAULT 0,
    output_audio_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
    web_search_requests INTEGER NOT NULL DEFAULT 0,
    file_search_calls INTEGER NOT NULL DEFAULT 0, service_tier TEXT
);
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
CREATE INDEX IF NOT EXISTS ledger_project_ts ON ledger (project, ts);
CREATE INDEX IF NOT EXISTS ledger_outcome_ts ON ledger (outcome, ts);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, name TEXT,
    organization TEXT NOT NULL, project TEXT, team TEXT, user TEXT, tier TEXT, feature TEXT,
    allowed_models TEXT, passthrough INTEGER NOT NULL DEFAULT 0, limits TEXT,
    created_at REAL NOT NULL, expires_at REAL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS overrides (
    kind TEXT NOT NULL, target TEXT NOT NULL, value TEXT NOT NULL, updated_at REAL NOT NULL,
    author TEXT, PRIMARY KEY (kind, target)
);
"""



def row_to_params(row: LedgerRow) -> tuple[Any, ...]:
    values: list[Any] = []
    for name in LEDGER_COLUMNS:
        value = getattr(row, name)
        if name in _JSON_COLUMNS:
            value = orjson.dumps(value).decode() if value else None
        elif name in _BOOL_COLUMNS:
            value = int(bool(value))
        values.append(value)
    return tuple(values)


def params_to_row(values: Sequence[Any]) -> LedgerRow:
    data: dict[str, Any] = {}
    for name, value in zip(LEDGER_COLUMNS, values, strict=True):
        if name in _JSON_COLUMNS:
            empty: Any = {} if name in ("tags", "detail") else []
            value = orjson.loads(value) if value else empty
        elif name in _BOOL_COLUMNS:
            value = bool(value)
        data[name] = value
    return LedgerRow(**data)


def provisional_rows(conn: sqlite3.Connection, ids: Sequence[str]) -> list[LedgerRow]:
    """The provisional rows (``LedgerRow.provisional``) in the ledger among ``ids``."""
    found: list[LedgerRow] = []
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), 500):
        chunk = unique[i:i + 500]
        found.extend(params_to_row(values) for values in conn.execute(
            f"SELECT {','.join(LEDGER_COLUMNS)} FROM ledger WHERE id IN "
            f"({','.join('?' * len(chunk))}) AND outcome = 'unsettled' AND estimated = 1",
            chunk))
    return found


def add_columns(conn: sqlite3.Connection) -> None:
    """Add the ``ADDED_COLUMNS`` a ledger made by an older version lacks (in one write
    transaction, so processes opening the file at once add each column once)."""

    def missing() -> list[tuple[str, str]]:
        have = {row[1] for row in conn.execute("PRAGMA table_info(ledger)")}
        return [(name, kind) for name, kind in ADDED_COLUMNS if name not in have]

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, kind in missing():
            conn.execute(f"ALTER TABLE ledger ADD COLUMN {name} {kind}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _key_from_row(values: Sequence[Any]) -> KeyRecord:
    data = dict(zip(KEY_COLUMNS, values, strict=True))
    data["allowed_models"] = orjson.loads(data["allowed_models"]) if data["allowed_models"] \
        else None
    data["limits"] = orjson.loads(data["limits"]) if data["limits"] else {}
    data["passthrough"] = bool(data["passthrough"])
    return KeyRecord(**data)


class SqliteDatabase(KeyLookups):
    def __init__(self, url: str) -> None:
        self.url = url
        self._file = SqliteFile.from_url(url, "database", busy_ms=10_000, bounded=False,
                                         setup=self._setup, thread="ts-db")
        self.path = self._file.path

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._file.run(fn)

    @staticmethod
    def _setup(conn: sqlite3.Connection) -> None:
        conn.create_function("ts_bucket", 3, bucket_label, deterministic=True)
        conn.create_function("hour_bucket", 3, hour_bucket, deterministic=True)
        conn.executescript(SCHEMA)
        add_columns(conn)
        conn.executescript(ADDED_INDEXES)
        conn.executescript(responses.SQLITE_SCHEMA)
        ensure_rollup(conn)

    async def open(self) -> None:
        await self._run(lambda conn: None)

    async def close(self) -> None:
        await self._file.close()

    # ledger -------------------------------------------------------------------------------

    async def insert_ledger(self, rows: Sequence[LedgerRow]) -> None:
        """Idempotent on the row id (a retried batch bills nothing twice), except that a
        provisional row is replaced by a final row with its id, whichever came first."""
        placeholders = ",".join("?" * len(LEDGER_COLUMNS))
        sql = (f"INSERT OR IGNORE INTO ledger ({','.join(LEDGER_COLUMNS)}) "
               f"VALUES ({placeholders})")

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                replaced = provisional_rows(conn, [r.id for r in rows if not r.provisional])
                if replaced:
                    conn.executemany("DELETE FROM ledger WHERE id = ?",
                                     [(row.id,) for row in replaced])
                    remove_from_rollup(conn, replaced)
                fresh = new_rows(conn, rows)
                conn.executemany(sql, [row_to_params(row) for row in fresh])
                add_to_rollup(conn, fresh)

        await self._run(write)

    async def ledger_rows(self, limit: int = 100, **filters: Any) -> list[LedgerRow]:
        where, args = _where(filters)
        sql = (f"SELECT {','.join(LEDGER_COLUMNS)} FROM ledger {where} "
               f"ORDER BY ts DESC, id DESC LIMIT ?")

        def read(conn: sqlite3.Connection) -> list[LedgerRow]:
            return [params_to_row(r) for r in conn.execute(sql, (*args, limit))]

        return await self._run(read)

    async def usage(self, query: UsageQuery) -> list[dict[str, Any]]:
        query.validate()

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return usage_from(conn, query)

        return await self._run(read)

    async def runs(self, since: float | None = None, filters: Mapping[str, str] | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        sql, args = runs_sql(since, filters, limit, lambda n: "?")

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return run_items(conn.execute(sql, args).fetchall())

        return await self._run(read)

    async def usage_by_label(self, query: UsageQuery, label: str) -> list[dict[str, Any]]:
        """Usage per tag (``team=search``) or per degradation (``trimmed``): ``query``'s
        groups, buckets and filters, plus one group ``label`` (``tag`` or ``degraded``). A
        request with two tags counts under both."""
        query.validate()
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return usage_from(conn, query, label)

        return await self._run(read)

    # keys ---------------------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        values = (
            record.id, record.hash, record.prefix, record.name, record.organization,
            record.project, record.team, record.user, record.tier, record.feature,
            orjson.dumps(record.allowed_models).decode() if record.allowed_models else None,
            int(record.passthrough), orjson.dumps(record.limits).decode(),
            record.created_at, record.expires_at, record.revoked_at,
        )
        sql = (f"INSERT INTO api_keys ({','.join(KEY_COLUMNS)}) "
               f"VALUES ({','.join('?' * len(KEY_COLUMNS))})")

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(sql, values)

        await self._run(write)

    async def _one_key(self, column: str, value: str) -> KeyRecord | None:
        sql = f"SELECT {','.join(KEY_COLUMNS)} FROM api_keys WHERE {column} = ?"

        def read(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(sql, (value,)).fetchone()
            return _key_from_row(row) if row else None

        return await self._run(read)

    async def list_keys(self, include_revoked: bool = False,
                        filters: Mapping[str, str] | None = None) -> list[KeyRecord]:
        where, args = self._listing(include_revoked, filters, lambda n: "?")
        sql = f"SELECT {','.join(KEY_COLUMNS)} FROM api_keys {where} ORDER BY created_at"

        def read(conn: sqlite3.Connection) -> list[KeyRecord]:
            return [_key_from_row(r) for r in conn.execute(sql, args)]

        return await self._run(read)

    async def key_limits(self) -> list[tuple[str, dict[str, Any]]]:
        sql = ("SELECT id, limits FROM api_keys WHERE revoked_at IS NULL AND limits IS NOT NULL "
               "AND limits NOT IN ('{}', 'null') ORDER BY id")

        def read(conn: sqlite3.Connection) -> list[tuple[str, dict[str, Any]]]:
            return [(key_id, orjson.loads(raw)) for key_id, raw in conn.execute(sql)]

        return await self._run(read)

    async def update_key(self, key_id: str, **changes: Any) -> KeyRecord | None:
        allowed = {"name", "revoked_at", "expires_at", "hash", "prefix", "limits",
                   "allowed_models", "feature", "tier", "passthrough"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))} of a key")
        values = []
        for name, value in changes.items():
            if name in ("limits", "allowed_models") and value is not None:
                value = orjson.dumps(value).decode()
            values.append(value)
        assignments = ", ".join(f"{name} = ?" for name in changes)

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?",
                             (*values, key_id))

        if changes:
            await self._run(write)
        return await self.key_by_id(key_id)


    # overrides ----------------------------------------------------------------------------

    async def list_overrides(self) -> list[Override]:
        def read(conn: sqlite3.Connection) -> list[Override]:
            rows = conn.execute("SELECT kind, target, value, updated_at, author FROM overrides "
                                "ORDER BY kind, target")
            return [Override(k, t, orjson.loads(v), u, a) for k, t, v, u, a in rows]

        return await self._run(read)

    async def set_override(self, override: Override) -> None:
        values = (override.kind, override.target, orjson.dumps(override.value).decode(),
                  override.updated_at, override.author)

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("INSERT INTO overrides (kind, target, value, updated_at, author) "
                             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, target) DO UPDATE SET "
                             "value = excluded.value, updated_at = excluded.updated_at, "
                             "author = excluded.author", values)

        await self._run(write)

    async def delete_override(self, kind: str, target: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            with conn:
                cur = conn.execute("DELETE FROM overrides WHERE kind = ? AND target = ?",
                                   (kind, target))
                return cur.rowcount > 0

        return await self._run(write)

    # responses ----------------------------------------------------------------------------

    async def save_responses(self, items: Sequence[StoredResponse]) -> None:
        if items:
            await self._run(lambda conn: responses.save(conn, items))

    async def get_response(self, response_id: str) -> StoredResponse | None:
        return await self._run(lambda conn: responses.get(conn, response_id))

    async def response_by_rid(self, rid: str) -> StoredResponse | None:
        return await self._run(lambda conn: responses.by_rid(conn, rid))

    async def adopt_responses(self, owner: str, now: float, lease_until: float,
                              limit: int = 100) -> list[StoredResponse]:
        return await self._run(lambda conn: responses.adopt(conn, owner, now, lease_until,
                                                            limit))

    async def renew_responses(self, owner: str, ids: Sequence[str],
                              lease_until: float) -> list[str]:
        if not ids:
            return []
        return await self._run(lambda conn: responses.renew(conn, owner, ids, lease_until))

    async def settle_response(self, response_id: str) -> bool:
        return await self._run(lambda conn: responses.settle(conn, response_id))

    async def release_responses(self, owner: str) -> None:
        await self._run(lambda conn: responses.release(conn, owner))

    async def prune_responses(self, before: float) -> int:
        return await self._run(lambda conn: responses.prune(conn, before))


def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for name, value in filters.items():
        if value is None:
            continue
        if name == "since":
            clauses.append("ts >= ?")
        elif name == "until":
            clauses.append("ts < ?")
        elif name == "flagged":
            clauses.append("(outcome != 'ok' OR (flags IS NOT NULL AND flags != '[]'))")
            continue
        elif name == "degraded":  # served with less: trimmed, downgraded, fallback …
            clauses.append("(degraded IS NOT NULL AND degraded != '[]')")
            continue
        elif name == "id":
            clauses.append("id = ?")
        elif name == "policy":
            clauses.append("(block_reason LIKE ? OR flags LIKE ?)")
            args.extend([f"%{value}%", f"%{value}%"])
            continue
        elif name in GROUPABLE:
            clauses.append(f"{name} = ?")
        else:
            raise ValueError(f"cannot filter by {name!r}")
        args.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args
