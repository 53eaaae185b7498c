"""``sqlite:///path``: answers in one file, shared by the worker processes of one machine.

One table, ``response_cache(key, body, meta, expires_at)``. Expired rows are not served and
are deleted lazily: every minute a write also removes a batch of them, so reads never write
and the file stays bounded by what was stored within one TTL. WAL mode lets reads go on
while another process writes; ``synchronous=NORMAL`` skips the fsync per commit (a power cut
may lose the newest entries, which only costs misses).

Keep the cache in its own file rather than the counters' one: the counter store takes the
database's write lock for every admission, and cache writes should not queue behind it.

The stdlib driver blocks, so every call runs on one dedicated thread, in order (the same
hand-off the SQLite counter store uses). URL options: ``busy_timeout`` (milliseconds to wait
for the write lock, default 500) and ``timeout`` (seconds before a call gives up with
StoreUnavailable, default 1).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from typing import TypeVar

from tokenstile.cache.answer import CachedAnswer
from tokenstile.cache.store import StoreUnavailable
from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.stores.counters_sqlite import _Worker
from tokenstile.stores.urls import StoreConfigError, option_number, url_options

T = TypeVar("T")

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
"""


def sqlite_cache_path(url: str) -> str:
    """``sqlite:///./x.db`` → ``./x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise StoreConfigError(f"expected sqlite:///path for the response cache, got {url!r}")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path or path.endswith("/") or ":memory:" in path:
        raise StoreConfigError(
            f"the SQLite URL {url!r} names no file (use memory:// for a private cache)"
        )
    return path


class SqliteResponseCache:
    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.path = sqlite_cache_path(url)
        options = url_options(url, ("busy_timeout", "timeout"), "response cache")
        self._busy_ms = int(option_number(options, "busy_timeout", 500.0))
        self._timeout = option_number(options, "timeout", 1.0)
        self._clock = clock or SYSTEM_CLOCK
        self._worker = _Worker(f"ts-cache:{os.path.basename(self.path)}")
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only
        self._next_purge = 0.0
        self._closed = False

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable(f"the SQLite response cache {self.path} is closed")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._worker.submit(lambda: self._call(fn))
        except TimeoutError:
            raise StoreUnavailable(
                f"the SQLite response cache {self.path} did not answer within "
                f"{self._timeout} s"
            ) from None

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._open() if self._conn is None else self._conn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"SQLite response cache {self.path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        self._conn = conn
        return conn

    async def get(self, key: str) -> CachedAnswer | None:
        def work(conn: sqlite3.Connection) -> tuple[bytes, str] | None:
            row = conn.execute(
                "SELECT body, meta FROM response_cache WHERE key = ? AND expires_at > ?",
                (key, self._clock.now()),
            ).fetchone()
            return None if row is None else (bytes(row[0]), str(row[1]))

        found = await self._run(work)
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

        await self._run(work)

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
