"""``sqlite:///path``: answers in one file, shared by the worker processes of one machine.

One table, ``response_cache(key, body, meta, expires_at)``, and one of short locks
(``response_cache_locks``: single flight across the worker processes). Expired rows are not
served and are deleted lazily: every minute a write also removes a batch of them, so reads
never write and the file stays bounded by what was stored within one TTL. WAL mode lets reads go on
while another process writes; ``synchronous=NORMAL`` skips the fsync per commit (a power cut
may lose the newest entries, which only costs misses).

Keep the cache in its own file rather than the counters' one: the counter store takes the
database's write lock for every admission, and cache writes should not queue behind it.

Every call runs on the store's one thread (``stores/sqlite.py``). URL options:
``busy_timeout`` (milliseconds to wait for the write lock, default 500) and ``timeout``
(seconds before a call gives up with StoreUnavailable, default 1: a miss is cheap, waiting
is not).
"""

from __future__ import annotations

import sqlite3

from tokenstile.cache.answer import CachedAnswer
from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.stores.sqlite import SqliteFile

PURGE_EVERY_S = 60.0
PURGE_BATCH = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS response_cache (
    key TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    meta TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS response_cache_expiry ON response_cache (expires_at);
CREATE TABLE IF NOT EXISTS response_cache_locks (
    key TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""


class SqliteResponseCache:
    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self._clock = clock or SYSTEM_CLOCK
        self._file = SqliteFile.from_url(
            url, "response cache", shared=True, busy_ms=500, timeout_s=1.0,
            setup=lambda conn: conn.executescript(_SCHEMA), thread="ts-cache")
        self.path = self._file.path
        self._next_purge = 0.0

    async def get(self, key: str) -> CachedAnswer | None:
        def work(conn: sqlite3.Connection) -> tuple[bytes, str] | None:
            row = conn.execute(
                "SELECT body, meta FROM response_cache WHERE key = ? AND expires_at > ?",
                (key, self._clock.now()),
            ).fetchone()
            return None if row is None else (bytes(row[0]), str(row[1]))

        found = await self._file.run(work)
        return None if found is None else CachedAnswer.from_parts(found[1], found[0])

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        meta = answer.meta(ttl_s).decode()

        def work(conn: sqlite3.Connection) -> None:
            now = self._clock.now()
            conn.execute(
                "INSERT OR REPLACE INTO response_cache (key, body, meta, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (key, answer.body, meta, now + ttl_s),
            )
            if now >= self._next_purge:
                self._next_purge = now + PURGE_EVERY_S
                conn.execute(
                    "DELETE FROM response_cache WHERE key IN (SELECT key FROM response_cache "
                    "WHERE expires_at <= ? LIMIT ?)",
                    (now, PURGE_BATCH),
                )

        await self._file.run(work)

    async def lock(self, key: str, token: str, ttl_s: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            now = self._clock.now()
            taken = conn.execute(
                "INSERT INTO response_cache_locks (key, token, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET token = excluded.token, "
                "expires_at = excluded.expires_at WHERE response_cache_locks.expires_at <= ?",
                (key, token, now + ttl_s, now))
            return taken.rowcount == 1

        return await self._file.run(work)

    async def unlock(self, key: str, token: str) -> None:
        await self._file.run(lambda conn: conn.execute(
            "DELETE FROM response_cache_locks WHERE key = ? AND token = ?", (key, token)))

    async def close(self) -> None:
        await self._file.close()
