"""Responses created through the gateway, in the database: who may reach each one, and the
background ones that still have to be billed.

A Responses API answer is addressable later (``GET /v1/responses/{id}``, cancel,
``input_items``), so the gateway remembers which organization and project created it and
on which upstream. A background response (``background: true``) is answered before it has
run, so its request is not settled then: its entry is ``pending``, with everything
settling it needs (the ledger row to write, the reservation to replace), and some gateway
owns it under a lease, renewing it while it polls the upstream. Whoever first moves it
from ``pending`` to ``settled`` writes its one ledger row; a gateway that dies leaves its
entries to be adopted by another once their lease runs out.

The same statements for SQLite (the functions taking a ``sqlite3.Connection``) and
PostgreSQL (``pg_*``, an ``asyncpg.Connection``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PG_SCHEMA", "SQLITE_SCHEMA", "StoredResponse"]

_COLUMNS = ("id", "upstream", "organization", "project", "key_id", "created_at", "state",
            "rid", "record", "owner", "lease_until")
_SELECT = ", ".join(_COLUMNS)


@dataclass(slots=True)
class StoredResponse:
    """``state``: ``stored`` (nothing to bill), ``pending`` (a background response still
    running upstream; ``record`` says how to bill it) or ``settled``."""

    id: str
    upstream: str
    organization: str | None
    project: str | None
    key_id: str | None
    created_at: float
    state: str = "stored"
    rid: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    lease_until: float = 0.0

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.upstream, self.organization, self.project, self.key_id,
                self.created_at, self.state, self.rid,
                orjson.dumps(self.record).decode() if self.record else None, self.owner,
                self.lease_until)


def _entry(values: Sequence[Any]) -> StoredResponse:
    data = dict(zip(_COLUMNS, values, strict=True))
    raw = data["record"]
    data["record"] = orjson.loads(raw) if raw else {}
    return StoredResponse(**data)


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, upstream TEXT NOT NULL, organization TEXT, project TEXT,
    key_id TEXT, created_at REAL NOT NULL, state TEXT NOT NULL, rid TEXT, record TEXT,
    owner TEXT, lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS responses_pending ON responses (state, lease_until);
CREATE INDEX IF NOT EXISTS responses_rid ON responses (rid);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""

PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id text COLLATE "C" PRIMARY KEY,
    upstream text NOT NULL,
    organization text, project text, key_id text,
    created_at double precision NOT NULL,
    state text NOT NULL,
    rid text,
    record jsonb,
    owner text,
    lease_until double precision NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS responses_pending ON responses (lease_until)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS responses_rid ON responses (rid) WHERE rid IS NOT NULL;
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""

# A known id keeps its entry, except that one settled while it could not be saved (the
# database was slow or down, and its first save landed after all) is marked settled.
_ON_CONFLICT = ("ON CONFLICT (id) DO UPDATE SET state = 'settled', owner = NULL "
                "WHERE excluded.state = 'settled' AND responses.state = 'pending'")

# --- SQLite ----------------------------------------------------------------------------------


def save(conn: sqlite3.Connection, items: Sequence[StoredResponse]) -> None:
    sql = (f"INSERT INTO responses ({_SELECT}) VALUES ({','.join('?' * len(_COLUMNS))}) "
           f"{_ON_CONFLICT}")
    with conn:
        conn.executemany(sql, [item.values() for item in items])


def get(conn: sqlite3.Connection, response_id: str) -> StoredResponse | None:
    row = conn.execute(f"SELECT {_SELECT} FROM responses WHERE id = ?",
                       (response_id,)).fetchone()
    return _entry(row) if row else None


def by_rid(conn: sqlite3.Connection, rid: str) -> StoredResponse | None:
    row = conn.execute(f"SELECT {_SELECT} FROM responses WHERE rid = ? LIMIT 1",
                       (rid,)).fetchone()
    return _entry(row) if row else None


def adopt(conn: sqlite3.Connection, owner: str, now: float, lease_until: float,
          limit: int) -> list[StoredResponse]:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(f"SELECT {_SELECT} FROM responses WHERE state = 'pending' AND "
                            "lease_until < ? ORDER BY lease_until LIMIT ?",
                            (now, limit)).fetchall()
        conn.executemany("UPDATE responses SET owner = ?, lease_until = ? WHERE id = ?",
                         [(owner, lease_until, row[0]) for row in rows])
    adopted = [_entry(row) for row in rows]
    for item in adopted:
        item.owner, item.lease_until = owner, lease_until
    return adopted


def renew(conn: sqlite3.Connection, owner: str, ids: Sequence[str],
          lease_until: float) -> list[str]:
    kept: list[str] = []
    with conn:
        for response_id in ids:
            cur = conn.execute("UPDATE responses SET lease_until = ? WHERE id = ? AND "
                               "owner = ? AND state = 'pending'",
                               (lease_until, response_id, owner))
            if cur.rowcount:
                kept.append(response_id)
    return kept


def settle(conn: sqlite3.Connection, response_id: str) -> bool:
    with conn:
        cur = conn.execute("UPDATE responses SET state = 'settled', owner = NULL WHERE "
                           "id = ? AND state = 'pending'", (response_id,))
        return cur.rowcount > 0


def release(conn: sqlite3.Connection, owner: str) -> None:
    with conn:
        conn.execute("UPDATE responses SET lease_until = 0 WHERE owner = ? AND "
                     "state = 'pending'", (owner,))


def prune(conn: sqlite3.Connection, before: float) -> int:
    with conn:
        cur = conn.execute("DELETE FROM responses WHERE created_at < ? AND "
                           "state != 'pending'", (before,))
        return cur.rowcount


# --- PostgreSQL ------------------------------------------------------------------------------


def _pg_entry(record: asyncpg.Record) -> StoredResponse:
    return _entry([record[name] for name in _COLUMNS])


async def pg_save(conn: asyncpg.Connection, items: Sequence[StoredResponse]) -> None:
    marks = ", ".join(f"${i + 1}" for i in range(len(_COLUMNS)))
    await conn.executemany(f"INSERT INTO responses ({_SELECT}) VALUES ({marks}) "
                           f"{_ON_CONFLICT}", [item.values() for item in items])


async def pg_get(conn: asyncpg.Connection, response_id: str) -> StoredResponse | None:
    row = await conn.fetchrow(f"SELECT {_SELECT} FROM responses WHERE id = $1", response_id)
    return _pg_entry(row) if row else None


async def pg_by_rid(conn: asyncpg.Connection, rid: str) -> StoredResponse | None:
    row = await conn.fetchrow(f"SELECT {_SELECT} FROM responses WHERE rid = $1 LIMIT 1", rid)
    return _pg_entry(row) if row else None


async def pg_adopt(conn: asyncpg.Connection, owner: str, now: float, lease_until: float,
                   limit: int) -> list[StoredResponse]:
    rows = await conn.fetch(
        f"UPDATE responses SET owner = $1, lease_until = $2 WHERE id IN (SELECT id FROM "
        "responses WHERE state = 'pending' AND lease_until < $3 ORDER BY lease_until "
        f"LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING {_SELECT}", owner, lease_until, now, limit)
    return [_pg_entry(row) for row in rows]


async def pg_renew(conn: asyncpg.Connection, owner: str, ids: Sequence[str],
                   lease_until: float) -> list[str]:
    rows = await conn.fetch("UPDATE responses SET lease_until = $1 WHERE id = ANY($2::text[]) "
                            "AND owner = $3 AND state = 'pending' RETURNING id",
                            lease_until, list(ids), owner)
    return [row["id"] for row in rows]


async def pg_settle(conn: asyncpg.Connection, response_id: str) -> bool:
    done = await conn.fetchval("UPDATE responses SET state = 'settled', owner = NULL WHERE "
                               "id = $1 AND state = 'pending' RETURNING id", response_id)
    return done is not None


async def pg_release(conn: asyncpg.Connection, owner: str) -> None:
    await conn.execute("UPDATE responses SET lease_until = 0 WHERE owner = $1 AND "
                       "state = 'pending'", owner)


async def pg_prune(conn: asyncpg.Connection, before: float) -> int:
    status = await conn.execute("DELETE FROM responses WHERE created_at < $1 AND "
                                "state != 'pending'", before)
    return int(status.rsplit(" ", 1)[-1] or 0)
