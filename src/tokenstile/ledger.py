"""Ledger writes off the hot path: rows are queued and written in batches by one task.

A request hands its row over in O(1) and goes on; the writer batches rows into one
transaction. Nothing is dropped silently:

- When a write fails (the database is unreachable, or answers with an error), the batch
  and every row submitted after it go to the local spool (``tokenstile.stores.spool``), a
  bounded file that survives a restart. While the spool holds rows it is the queue: new
  rows go in behind the old ones, and the writer probes the database with backoff
  (0.1 s doubling to ``max_retry_delay_s``) by writing the oldest spooled batch. When that
  succeeds it drains the spool in order, then goes back to writing from memory. Inserts
  are idempotent on the row id, so a crash mid-drain cannot bill twice.
- When the spool is full (or cannot be written at all), rows stay in memory, which is
  the last resort: an error is logged (at most every 10 s) and ``alarms`` hear
  ``("spool_full", rows_in_memory)``. They are written once the database answers.
- A row the database refuses for good (bad data, not an outage) is isolated from its
  batch and kept in the spool's ``rejected`` table, logged, and announced as
  ``("rejected", 1)``; the rest of the batch is written.
- ``close`` writes what it can, puts the rest in the spool even past its bound (the
  process is about to exit; the bound protects the disk from a long outage, not from one
  last batch), and only if the disk refuses that too logs each row as JSON at ERROR level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence

import orjson

from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.database import Database
from tokenstile.stores.spool import LedgerSpool, Spooled
from tokenstile.types import LedgerRow

log = logging.getLogger("tokenstile.ledger")

_LOG_EVERY_S = 10.0
_RECHECK_S = 30.0


def _resolve_none(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def refused(exc: BaseException) -> bool:
    """True when the database rejected the data itself, so retrying cannot help."""
    if isinstance(exc, StoreUnavailable):
        return False
    return isinstance(exc, ValueError | TypeError | OverflowError | sqlite3.IntegrityError
                      | sqlite3.DataError)


class LedgerWriter:
    def __init__(self, db: Database, batch_size: int = 500, linger_s: float = 0.005,
                 spool: LedgerSpool | None = None, max_retry_delay_s: float = 5.0,
                 close_drain_s: float = 5.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._clock = clock
        self._batch_size = batch_size
        # Larger batches from the spool: each one costs an fsync'd removal.
        self._drain_batch = batch_size * 4
        self._linger_s = linger_s
        self.spool = spool if spool is not None else LedgerSpool.for_database(db.url)
        self._max_delay = max_retry_delay_s
        self._close_drain_s = close_drain_s
        self._pending: list[LedgerRow] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ready = asyncio.Event()  # set once the spool was checked for leftovers
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Outage state: the database failed last time; probe again at ``_next_probe``.
        self._down = False
        self._delay = 0.1
        self._next_probe = 0.0
        self._spool_room = True  # False after an append the spool could not take whole
        self._last_loud = 0.0
        self.written = 0
        self.failures = 0
        self.spooled = 0           # rows ever moved to the spool by this writer
        self.spool_full_events = 0
        self.lost = 0              # rows only logged at shutdown: the disk refused them
        self.listeners: list[Callable[[list[LedgerRow]], None]] = []
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self.alarms: list[Callable[[str, int], None]] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenstile-ledger")

    def submit(self, row: LedgerRow) -> None:
        self._pending.append(row)
        self._idle.clear()
        self._wakeup.set()

    async def submit_and_wait(self, row: LedgerRow, wait_s: float) -> None:
        """Submit the row and wait until it is written, at most ``wait_s`` seconds (during a
        database outage the row waits in the spool instead): a reservation that stands for
        the row is settled only once the row is safe."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[row.id] = waiter
        self.submit(row)
        give_up = loop.call_later(wait_s, _resolve_none, waiter)
        try:
            await waiter
        finally:
            give_up.cancel()
            self._waiters.pop(row.id, None)

    @property
    def backlog(self) -> int:
        """Rows not yet in the database: in memory plus in the spool."""
        return len(self._pending) + self.spool.depth

    @property
    def spool_depth(self) -> int:
        return self.spool.depth

    @property
    def in_memory(self) -> int:
        return len(self._pending)

    @property
    def database_down(self) -> bool:
        return self._down

    def stats(self) -> dict[str, int | bool]:
        """For ``/readyz`` and metrics."""
        return {
            "in_memory": len(self._pending), "spooled": self.spool.depth,
            "rejected": self.spool.rejected, "spool_full": not self._spool_room,
            "database_down": self._down, "written": self.written,
            "failures": self.failures, "lost": self.lost,
        }

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._open_spool()
        self._ready.set()
        while True:
            if self._closing:
                await self._finish()
                return
            if self._down or self.spool.depth:
                await self._outage_step()
                continue
            if not self._pending:
                self._idle.set()
                woke = await self._wait(_RECHECK_S if self.spool.exists() else None)
                if not woke:
                    await self._refresh_spool()
                    continue
                if not self._closing and self._linger_s:
                    await asyncio.sleep(self._linger_s)
                continue
            batch = self._pending[: self._batch_size]
            try:
                await self._write(batch)
            except Exception as exc:
                self._failed(exc, len(batch))
                continue  # the outage step spools them
            del self._pending[: len(batch)]

    async def _outage_step(self) -> None:
        """One round while the spool is the queue: spool new rows, probe when due, wait."""
        if self._pending and self._spool_room:
            await self._to_spool(force=False)
        if self._clock.monotonic() >= self._next_probe and await self._drain_one():
            return
        if not self._down and not self.spool.depth:
            return
        await self._wait(max(0.0, self._next_probe - self._clock.monotonic()))
        if self._pending and not self._closing and self._linger_s:
            await asyncio.sleep(self._linger_s)

    async def _drain_one(self) -> bool:
        """Write the oldest batch (from the spool, else from memory); False on failure."""
        items: list[Spooled] = []
        if self.spool.depth:
            try:
                items = await self.spool.peek(self._drain_batch)
            except Exception:
                log.exception("cannot read the ledger spool %s", self.spool.path)
                self._schedule_probe()
                return False
            if not items:  # another process drained it
                await self._refresh_spool()
                return True
        rows = [item.row for item in items] or self._pending[: self._batch_size]
        if not rows:
            self._recovered()
            return True
        try:
            await self._write(rows, items)
        except Exception as exc:
            self._failed(exc, len(rows))
            return False
        if items:
            try:
                await self.spool.remove([item.seq for item in items])
            except Exception:  # written again later, and the insert is idempotent
                log.exception("cannot remove written rows from the ledger spool")
                self._schedule_probe()  # not in a tight loop
            self._spool_room = not self.spool.full
        else:
            del self._pending[: len(rows)]
        if not self.spool.depth:
            self._recovered()
        return True

    async def _write(self, rows: Sequence[LedgerRow], items: Sequence[Spooled] = ()) -> None:
        """Insert rows; a batch the database refuses is retried row by row so that only
        the bad rows are set aside."""
        try:
            await self._db.insert_ledger(rows)
        except Exception as exc:
            if not refused(exc):
                raise
            if len(rows) == 1:
                await self._reject(rows[0], items[0] if items else None, exc)
                return
            written: list[LedgerRow] = []
            for i, row in enumerate(rows):
                try:
                    await self._db.insert_ledger([row])
                except Exception as row_exc:
                    if not refused(row_exc):
                        raise
                    await self._reject(row, items[i] if items else None, row_exc)
                else:
                    written.append(row)
            self._wrote(written)
            return
        self._wrote(list(rows))

    def _wrote(self, rows: list[LedgerRow]) -> None:
        self.written += len(rows)
        if self._waiters:
            for row in rows:
                waiter = self._waiters.pop(row.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        for listener in self.listeners:
            try:
                listener(rows)
            except Exception:
                log.exception("ledger listener failed")

    async def _reject(self, row: LedgerRow, item: Spooled | None, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        log.error("the database refused ledger row %s for good (%s); it is kept in the "
                  "rejected table of %s", row.id, error, self.spool.path)
        try:
            await self.spool.reject(item or Spooled(0, row), error)
        except Exception:
            log.exception("cannot keep rejected ledger row in the spool")
            self._last_resort([row])
        self._alarm("rejected", 1)

    # -- outage bookkeeping -----------------------------------------------------------------

    def _failed(self, exc: BaseException, rows: int) -> None:
        self.failures += 1
        if not self._down:
            log.error("ledger write of %d rows failed (%s: %s); rows go to the spool %s "
                      "until the database answers", rows, type(exc).__name__, exc,
                      self.spool.path)
        else:
            log.warning("database still unavailable (%s); %d rows spooled, %d in memory, "
                        "next try in %.1fs", type(exc).__name__, self.spool.depth,
                        len(self._pending), self._delay)
        self._down = True
        self._idle.clear()
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        self._next_probe = self._clock.monotonic() + self._delay
        self._delay = min(self._delay * 2, self._max_delay)

    def _recovered(self) -> None:
        if self._down:
            log.warning("database answers again; ledger spool drained")
        self._down = False
        self._delay = 0.1
        self._next_probe = 0.0
        self._spool_room = True

    async def _to_spool(self, force: bool) -> None:
        rows = list(self._pending)
        try:
            taken = await self.spool.append(rows, force=force)
        except Exception:
            taken = 0
            self._loudly("cannot write the ledger spool %s; %d rows held in memory",
                         self.spool.path, len(self._pending), exc_info=True)
        del self._pending[:taken]
        self.spooled += taken
        if taken:
            self._alarm("spooled", taken)
        if taken < len(rows):
            if self._spool_room:
                self.spool_full_events += 1
            self._spool_room = False
            self._loudly("ledger spool %s is full (%d rows, %d bytes); %d rows held in "
                         "memory until the database answers", self.spool.path,
                         self.spool.depth, self.spool.size_bytes, len(self._pending))
            self._alarm("spool_full", len(self._pending))

    async def _open_spool(self) -> None:
        try:
            waiting = await self.spool.open()
        except Exception:
            log.exception("cannot open the ledger spool %s", self.spool.path)
            return
        if waiting:
            log.warning("%d ledger rows were left in the spool %s by an earlier run; "
                        "writing them now", waiting, self.spool.path)
            self._idle.clear()

    async def _refresh_spool(self) -> None:
        if not self.spool.exists():
            return
        try:
            await self.spool.refresh()
        except Exception:
            log.exception("cannot read the ledger spool %s", self.spool.path)
        if self.spool.depth:
            self._idle.clear()

    async def _wait(self, seconds: float | None) -> bool:
        """Until a row is submitted, ``close`` is called, or ``seconds``; True if woken."""
        try:
            if seconds is None:
                await self._wakeup.wait()
            else:
                await asyncio.wait_for(self._wakeup.wait(), seconds)
        except TimeoutError:
            return False
        finally:
            self._wakeup.clear()
        return True

    def _alarm(self, event: str, count: int) -> None:
        for alarm in self.alarms:
            try:
                alarm(event, count)
            except Exception:
                log.exception("ledger alarm hook failed")

    def _loudly(self, message: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock.monotonic()
        if now - self._last_loud >= _LOG_EVERY_S:
            self._last_loud = now
            log.error(message, *args, exc_info=exc_info)

    def _last_resort(self, rows: Sequence[LedgerRow]) -> None:
        """Neither the database nor the disk took these rows: the log is all that is left."""
        self.lost += len(rows)
        self._alarm("lost", len(rows))
        for row in rows:
            log.error("ledger row not stored, recorded here instead: %s",
                      orjson.dumps(row).decode())

    # -- shutdown ---------------------------------------------------------------------------

    async def _finish(self) -> None:
        """Write what can be written within ``close_drain_s``; spool the rest."""
        deadline = self._clock.monotonic() + self._close_drain_s
        while (self._pending or self.spool.depth) and self._clock.monotonic() < deadline:
            if self._down and self._clock.monotonic() < self._next_probe:
                break
            if not await self._drain_one():
                break
        if self._pending:
            await self._to_spool(force=True)
            if self._pending:
                self._last_resort(self._pending)
                self._pending.clear()
        if self.spool.depth:
            log.warning("%d ledger rows stay in the spool %s; they are written on the next "
                        "start", self.spool.depth, self.spool.path)
        else:
            self._idle.set()

    async def flush(self) -> None:
        """Wait until every row submitted so far (and every row an earlier run left in the
        spool) is in the database."""
        if self._task is not None:
            await self._ready.wait()
        if self._pending or self.spool.depth:
            self._wakeup.set()
            await self._idle.wait()

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.spool.close()
