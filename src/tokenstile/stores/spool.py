"""A bounded, durable local queue for ledger rows the database could not take.

When the database is unreachable the ledger writer moves its rows here instead of holding
them in memory, so a gateway that crashes or restarts during an outage loses nothing: the
rows are written, oldest first, once the database answers again (on the next start at the
latest). Inserts into the database are idempotent on the row id, so a crash between
writing a batch and removing it from the spool cannot bill a call twice.

The spool is one SQLite file per database, ``<dir>/ledger-<hash of the database URL>.spool``
(WAL, ``synchronous=FULL``: every append is one fsync'd transaction, one per batch). Worker
processes on one machine that share a directory share the file. Its bound (rows and bytes
of row data) is checked inside each append's transaction, so it holds across processes.

Rows a database refuses for good (bad data, not an outage) move to the ``rejected`` table
of the same file: kept, logged, counted, never retried in a loop and never dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from tokenstile.stores.sqlite import SqliteFile, SqliteTimeouts
from tokenstile.types import LedgerRow

T = TypeVar("T")

DEFAULT_DIR = "./tokenstile-spool"
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of row data
_TIMEOUTS = SqliteTimeouts(busy_ms=30_000, call_s=None)

_IDENTITY_PARAMS = frozenset({"schema", "options", "search_path", "dbname", "database",
                              "host", "port", "user"})
_ROW_FIELDS = frozenset(f.name for f in dataclasses.fields(LedgerRow))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, nbytes INTEGER NOT NULL,
    row BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, rejected_at REAL NOT NULL,
    error TEXT NOT NULL, row BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    one INTEGER PRIMARY KEY CHECK (one = 1), rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
    label TEXT
);
INSERT OR IGNORE INTO meta (one, rows, bytes, label) VALUES (1, 0, 0, NULL);
"""


def database_label(url: str) -> str:
    """The database URL without its password: what names the spool, safe to log.

    A password rotation must not orphan a spool, and a secret must not reach a file name.
    """
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        return "sqlite:///" + os.path.abspath(path)
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def database_identity(url: str) -> str:
    """What makes two URLs the same database: the label without tuning settings (a new
    pool size or timeout must not orphan a spool)."""
    label = database_label(url)
    if label.startswith("sqlite:///"):
        return label
    parts = urlsplit(label)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k in _IDENTITY_PARAMS]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), ""))


def spool_path(url: str, directory: str | os.PathLike[str]) -> Path:
    digest = hashlib.sha256(database_identity(url).encode()).hexdigest()[:16]
    return Path(directory) / f"ledger-{digest}.spool"


def encode_row(row: LedgerRow) -> bytes:
    return orjson.dumps(row)


def decode_row(data: bytes) -> LedgerRow:
    """Tolerant of rows spooled by an older or newer version (unknown fields ignored)."""
    values = orjson.loads(data)
    return LedgerRow(**{k: v for k, v in values.items() if k in _ROW_FIELDS})


@dataclass(frozen=True, slots=True)
class Spooled:
    seq: int
    row: LedgerRow


class LedgerSpool:
    """The spool file of one database. All file work runs on one worker thread.

    The file is created on the first append only; ``open`` merely looks for rows a
    previous process left, so a healthy gateway never touches the disk.
    """

    def __init__(self, path: str | os.PathLike[str], max_rows: int = DEFAULT_MAX_ROWS,
                 max_bytes: int = DEFAULT_MAX_BYTES, label: str | None = None) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.label = label
        self.depth = 0       # rows waiting, as of this process's last look at the file
        self.size_bytes = 0  # their row data, in bytes
        self.rejected = 0    # rows the database refused for good, kept in ``rejected``
        self._file: SqliteFile | None = None

    @classmethod
    def for_database(cls, url: str, directory: str | os.PathLike[str] | None = None,
                     max_rows: int | None = None, max_bytes: int | None = None) -> LedgerSpool:
        """The spool for ``url``; unset settings come from ``TOKENSTILE_SPOOL_DIR``,
        ``TOKENSTILE_SPOOL_MAX_ROWS`` and ``TOKENSTILE_SPOOL_MAX_BYTES``, then defaults."""
        env = os.environ
        directory = directory or env.get("TOKENSTILE_SPOOL_DIR") or DEFAULT_DIR
        if max_rows is None:
            max_rows = int(env.get("TOKENSTILE_SPOOL_MAX_ROWS") or DEFAULT_MAX_ROWS)
        if max_bytes is None:
            max_bytes = int(env.get("TOKENSTILE_SPOOL_MAX_BYTES") or DEFAULT_MAX_BYTES)
        return cls(spool_path(url, directory), max_rows, max_bytes, database_label(url))

    @property
    def full(self) -> bool:
        return self.depth >= self.max_rows or self.size_bytes >= self.max_bytes

    def exists(self) -> bool:
        return (self._file is not None and self._file.connected) or self.path.exists()

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._file is None:
            self._file = SqliteFile(str(self.path), "ledger spool", _TIMEOUTS, setup=self._setup,
                                    synchronous="FULL", first_pragmas=("auto_vacuum=INCREMENTAL",),
                                    thread="ts-spool")
        return await self._file.run(fn)

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)
        if self.label:
            conn.execute("UPDATE meta SET label = ? WHERE one = 1 AND label IS NULL",
                         (self.label,))

    def _refresh(self, conn: sqlite3.Connection) -> None:
        rows, size = conn.execute("SELECT rows, bytes FROM meta WHERE one = 1").fetchone()
        self.depth, self.size_bytes = int(rows), int(size)
        self.rejected = int(conn.execute("SELECT count(*) FROM rejected").fetchone()[0])

    # -- operations -------------------------------------------------------------------------

    async def open(self) -> int:
        """Look for rows left by an earlier process; return how many are waiting."""
        if not self.exists():
            return 0
        await self._run(self._refresh)
        return self.depth

    async def refresh(self) -> int:
        """Re-read the depth (other processes sharing the file move it too)."""
        return await self.open()

    async def append(self, rows: Sequence[LedgerRow], force: bool = False) -> int:
        """Append rows in order, as many as the bound allows (all of them with ``force``),
        in one fsync'd transaction; return how many were taken."""
        if not rows:
            return 0
        encoded = [(row.id, encode_row(row)) for row in rows]

        def write(conn: sqlite3.Connection) -> int:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                count, size = conn.execute("SELECT rows, bytes FROM meta WHERE one = 1").fetchone()
                taken: list[tuple[str, int, bytes]] = []
                added = 0
                for row_id, data in encoded:
                    if not force and (count + len(taken) >= self.max_rows
                                      or size + added + len(data) > self.max_bytes):
                        break
                    taken.append((row_id, len(data), data))
                    added += len(data)
                if taken:
                    conn.executemany("INSERT INTO spool (id, nbytes, row) VALUES (?, ?, ?)",
                                     taken)
                    conn.execute("UPDATE meta SET rows = rows + ?, bytes = bytes + ? "
                                 "WHERE one = 1", (len(taken), added))
            self._refresh(conn)
            return len(taken)

        return await self._run(write)

    async def peek(self, limit: int) -> list[Spooled]:
        """The oldest ``limit`` rows, left in place until ``remove``."""
        if not self.exists():
            return []

        def read(conn: sqlite3.Connection) -> list[Spooled]:
            cur = conn.execute("SELECT seq, row FROM spool ORDER BY seq LIMIT ?", (limit,))
            return [Spooled(seq, decode_row(data)) for seq, data in cur]

        return await self._run(read)

    async def remove(self, seqs: Sequence[int]) -> None:
        """Forget rows the database now holds: ``seqs`` as ``peek`` returned them, so
        every row from the first to the last of them (a row another process removed first
        is simply not counted twice)."""
        if not seqs:
            return

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                self._delete(conn, min(seqs), max(seqs))
            if self.depth == 0:
                self._compact(conn)

        await self._run(write)

    def _delete(self, conn: sqlite3.Connection, first: int, last: int) -> None:
        gone, size = conn.execute(
            "SELECT count(*), coalesce(sum(nbytes), 0) FROM spool WHERE seq BETWEEN ? AND ?",
            (first, last)).fetchone()
        conn.execute("DELETE FROM spool WHERE seq BETWEEN ? AND ?", (first, last))
        conn.execute("UPDATE meta SET rows = max(rows - ?, 0), bytes = max(bytes - ?, 0) "
                     "WHERE one = 1", (gone, size))
        self._refresh(conn)

    def _compact(self, conn: sqlite3.Connection) -> None:
        """Give the disk back once the spool is empty."""
        try:
            conn.execute("PRAGMA incremental_vacuum")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:  # another process is busy with the file: next time
            pass

    async def reject(self, item: Spooled, error: str) -> None:
        """Move a row the database refuses for good to ``rejected``, in one transaction."""
        data = encode_row(item.row)

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO rejected (id, rejected_at, error, row) "
                             "VALUES (?, ?, ?, ?)", (item.row.id, time.time(), error[:2000],
                                                     data))
                self._delete(conn, item.seq, item.seq)

        await self._run(write)

    async def rejected_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """What the database refused, with why (for operators and tests)."""
        if not self.exists():
            return []

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute("SELECT id, rejected_at, error, row FROM rejected "
                               "ORDER BY seq LIMIT ?", (limit,))
            return [{"id": i, "rejected_at": at, "error": err, "row": decode_row(data)}
                    for i, at, err, data in cur]

        return await self._run(read)

    async def close(self) -> None:
        """Close the file; a later call opens it again."""
        spool_file, self._file = self._file, None
        if spool_file is not None:
            await spool_file.close()
