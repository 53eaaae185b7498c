"""What every store kept in a SQLite file shares: counters, response cache, database, alert
history and the ledger spool.

The file is opened on the first call: ``busy_timeout`` makes a writer wait for the lock
instead of failing, WAL lets readers carry on while another process writes, and
``synchronous=NORMAL`` skips the fsync per commit (a power cut may lose the last commits,
never corrupt the file) unless a store needs every commit on disk.

The stdlib driver blocks, so every call of a store runs on one dedicated thread, in order;
the event loop only waits on a future. (A bare thread and queue rather than a
ThreadPoolExecutor: the hand-off costs half as much, and that is most of an admission.)
With group commit, calls that queued up while the thread was busy run in one write
transaction, each in a savepoint of its own: under concurrency one commit serves many.

Timeouts come from the URL: ``busy_timeout`` (milliseconds a writer waits for the lock) and
``timeout`` (seconds before a call gives up with StoreUnavailable); each store picks its
defaults. A failure of the file or the disk (``sqlite3.Error``, ``OSError``) becomes
StoreUnavailable; a constraint or data error, the data's fault rather than the store's,
passes through as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.urls import StoreConfigError, option_number, redact_url, url_options

T = TypeVar("T")

Outcome = tuple[Any, BaseException | None]
BatchRunner = Callable[[list[Callable[[], Any]]], list[Outcome]]
MAX_BATCH = 64
_REFUSED = (sqlite3.IntegrityError, sqlite3.DataError)


def sqlite_path(url: str, what: str, *, shared: bool = False) -> str:
    """``sqlite:///./x.db`` → ``./x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``.

    A ``shared`` store (one the processes of a machine share) refuses an in-memory database.
    """
    if not url.startswith("sqlite:///"):
        raise StoreConfigError(f"expected sqlite:///path for the {what}, got {redact_url(url)!r}")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path or path.endswith("/"):
        raise StoreConfigError(f"the SQLite URL {redact_url(url)!r} names no file")
    if shared and (":memory:" in path or "mode=memory" in url):
        raise StoreConfigError(
            f"the SQLite {what} needs a file so that processes can share it; "
            "use memory:// for one private to one process"
        )
    return path


@dataclass(frozen=True, slots=True)
class SqliteTimeouts:
    """``busy_ms``: how long a writer waits for the lock; ``call_s``: how long a caller waits
    for its answer before StoreUnavailable (None: as long as the call takes)."""

    busy_ms: int
    call_s: float | None


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: ``BEGIN IMMEDIATE`` takes the lock before anything is read, so
    a check-then-write cannot interleave with another process; rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # keep the original error
                conn.execute("ROLLBACK")
        raise


def _resolve(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # cancelled, or timed out (``SqliteFile.run``)
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)


def _resolve_all(answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
                 ) -> None:
    for fut, result, error in answers:
        _resolve(fut, result, error)


def _hand_back(batch: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Any]],
               outcomes: list[Outcome]) -> None:
    """Resolve a batch's futures with one wake-up of each waiting loop (one self-pipe write
    for the batch, not one per call)."""
    by_loop: dict[asyncio.AbstractEventLoop,
                  list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for (loop, fut, _), (result, error) in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((fut, result, error))
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
            loop.call_soon_threadsafe(_resolve_all, answers)


def _pragma_when_free(conn: sqlite3.Connection, pragma: str, deadline: float) -> None:
    """``PRAGMA pragma``, waiting for the lock until ``deadline``: switching a new file to
    WAL while another process opens it too can answer "database is locked" at once,
    without the busy timeout's wait (seen with four stores opening one file together)."""
    while True:
        try:
            conn.execute(f"PRAGMA {pragma}")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _outcome(fn: Callable[[], Any]) -> Outcome:
    try:
        return fn(), None
    except BaseException as exc:
        return None, exc


def _expire(fut: asyncio.Future[Any], file: SqliteFile, limit: float) -> None:
    if not fut.done():
        fut.set_exception(StoreUnavailable(
            f"the SQLite {file.what} {file.path} did not answer within {limit} s"))


class Worker:
    """One thread that runs a store's calls one after another.

    With a ``batch_runner``, calls that queued up while the thread was busy are handed over
    together (up to ``MAX_BATCH``), so a store can run them in one transaction.
    """

    def __init__(self, name: str, batch_runner: BatchRunner | None = None) -> None:
        self._queue: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._batch_runner = batch_runner
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if not self._thread.is_alive():
            self._thread.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, fut, fn))
        return fut

    def stop(self) -> None:
        self._queue.put(None)

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH and self._batch_runner is not None:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            # the caller gave up (timed out) before it started: skip it
            live = [entry for entry in batch if not entry[1].done()]
            if not live:
                continue
            if len(live) > 1 and self._batch_runner is not None:
                outcomes = self._batch_runner([fn for _, _, fn in live])
            else:
                outcomes = [_outcome(live[0][2])]
            _hand_back(live, outcomes)


class SqliteFile:
    """One SQLite file, opened on the first call, every call on one worker thread.

    ``setup`` runs once on the new connection (schema, functions); ``first_pragmas`` run
    before WAL is switched on (``auto_vacuum`` must precede the first table). With
    ``group_commit``, queued calls share one transaction; ``before_commit`` runs inside
    every write transaction just before it commits (housekeeping while the lock is held).
    """

    def __init__(
        self,
        path: str,
        what: str,
        timeouts: SqliteTimeouts,
        *,
        setup: Callable[[sqlite3.Connection], object] | None = None,
        synchronous: str = "NORMAL",
        first_pragmas: Sequence[str] = (),
        group_commit: bool = False,
        before_commit: Callable[[sqlite3.Connection], None] | None = None,
        thread: str = "ts-sqlite",
    ) -> None:
        self.path = path
        self.what = what
        self.timeouts = timeouts
        self._setup = setup
        self._pragmas = (*first_pragmas, "journal_mode=WAL", f"synchronous={synchronous}")
        self._before_commit = before_commit
        self._worker = Worker(f"{thread}:{os.path.basename(path)}",
                              self._run_batch if group_commit else None)
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only
        self._in_batch = False
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        what: str,
        *,
        shared: bool = False,
        busy_ms: float = 2000.0,
        timeout_s: float | None = None,
        bounded: bool = True,
        **options: Any,
    ) -> SqliteFile:
        """The file a store URL names, with its ``busy_timeout`` and ``timeout`` options.

        ``timeout`` defaults to ``timeout_s``, else (for a ``bounded`` store) to the lock
        wait plus one second. An unbounded store's callers wait as long as a call takes (a
        rollup filled at open, a month of ledger read) unless the URL says otherwise.
        ``options`` go to the constructor.
        """
        path = sqlite_path(url, what, shared=shared)
        query = url_options(url, ("busy_timeout", "timeout"), what)
        busy = int(option_number(query, "busy_timeout", busy_ms))
        if timeout_s is None and bounded:
            timeout_s = busy / 1000 + 1.0
        call_s = None
        if timeout_s is not None or "timeout" in query:
            call_s = option_number(query, "timeout", timeout_s or 0.0)
        return cls(path, what, SqliteTimeouts(busy, call_s), **options)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"SQLite {self.what} {self.path}: {exc}")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the worker thread, within the call timeout."""
        if self._closed:
            raise StoreUnavailable(f"the SQLite {self.what} {self.path} is closed")
        limit = self.timeouts.call_s
        fut = self._worker.submit(lambda: self._call(fn))
        if limit is None:
            return await fut
        # A timer on the future, not an asyncio.timeout scope: one call_later per call.
        expiry = asyncio.get_running_loop().call_later(limit, _expire, fut, self, limit)
        try:
            return await fut
        finally:
            expiry.cancel()

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self.connection())
        except _REFUSED:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from exc

    def connection(self) -> sqlite3.Connection:
        """The open connection (opened now if need be); on the worker thread only."""
        return self._open() if self._conn is None else self._conn

    def _open(self) -> sqlite3.Connection:
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        busy = self.timeouts.busy_ms
        conn = sqlite3.connect(
            self.path, timeout=busy / 1000, isolation_level=None, cached_statements=256
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={busy}")
            deadline = time.monotonic() + busy / 1000
            for pragma in self._pragmas:
                _pragma_when_free(conn, pragma, deadline)
            if self._setup is not None:
                self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def write(self, conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        """``fn`` inside one write transaction; inside a group commit, inside the batch's."""
        if self._in_batch:
            return fn()
        with immediate(conn):
            result = fn()
            if self._before_commit is not None:
                self._before_commit(conn)
        return result

    def _run_batch(self, fns: list[Callable[[], Any]]) -> list[Outcome]:
        """Calls that queued up together, in one write transaction: each in a savepoint of
        its own, so one that fails is rolled back alone and the others still commit."""
        try:
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            unavailable = self._unavailable(exc)
            return [(None, unavailable) for _ in fns]
        outcomes: list[Outcome] = []
        self._in_batch = True
        try:
            for fn in fns:
                conn.execute("SAVEPOINT op")
                result, error = _outcome(fn)
                conn.execute("ROLLBACK TO op" if error is not None else "RELEASE op")
                if error is not None:
                    conn.execute("RELEASE op")
                outcomes.append((result, error))
            if self._before_commit is not None:
                self._before_commit(conn)
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            failed = self._unavailable(exc)
            return [(None, failed) for _ in fns]
        finally:
            self._in_batch = False
        return outcomes

    async def close(self) -> None:
        """Close the file after the calls already queued; later calls are unavailable."""
        if self._closed:
            return
        self._closed = True
        if not self._worker.started:
            return

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            async with asyncio.timeout(self.timeouts.call_s):
                await self._worker.submit(shut)
        except TimeoutError:
            pass
        finally:
            self._worker.stop()


class SqliteTableStore:
    """A store on tables of its own in the ledger's SQLite file (the alert history, the
    record store), on a worker thread of its own; calls wait as long as they take unless
    the URL's ``timeout`` says otherwise."""

    def __init__(self, url: str, what: str, setup: Callable[[sqlite3.Connection], object],
                 thread: str) -> None:
        self.url = url
        self._file = SqliteFile.from_url(url, what, busy_ms=10_000, bounded=False,
                                         setup=setup, thread=thread)
        self.path = self._file.path

    async def open(self) -> None:
        await self._file.run(lambda conn: None)

    async def close(self) -> None:
        await self._file.close()
