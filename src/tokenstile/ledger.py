"""Ledger writes off the hot path: rows are queued and written in batches by one task.

A request hands its row over in O(1) and goes on; the writer batches rows into one
transaction. Nothing is dropped: a failed write is retried with backoff (rows stay queued),
and ``close`` drains the queue before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tokenstile.stores.database import Database
from tokenstile.types import LedgerRow

log = logging.getLogger("tokenstile.ledger")


class LedgerWriter:
    def __init__(self, db: Database, batch_size: int = 500, linger_s: float = 0.05) -> None:
        self._db = db
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._pending: list[LedgerRow] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0
        self.failures = 0
        self.listeners: list[Callable[[list[LedgerRow]], None]] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenstile-ledger")

    def submit(self, row: LedgerRow) -> None:
        self._pending.append(row)
        self._idle.clear()
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                if not self._closing and self._linger_s:
                    await asyncio.sleep(self._linger_s)
            batch = self._pending[: self._batch_size]
            if not batch:
                continue
            try:
                await self._db.insert_ledger(batch)
            except Exception:
                self.failures += 1
                log.exception("ledger write of %d rows failed; retrying in %.1fs",
                              len(batch), delay)
                if self._closing and delay > 2.0:
                    log.error("giving up on %d ledger rows at shutdown", len(self._pending))
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            del self._pending[: len(batch)]
            self.written += len(batch)
            for listener in self.listeners:
                try:
                    listener(batch)
                except Exception:
                    log.exception("ledger listener failed")

    async def flush(self) -> None:
        """Wait until every row submitted so far is written."""
        if self._pending:
            self._wakeup.set()
            await self._idle.wait()

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
