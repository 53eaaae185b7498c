"""What a running gateway shows of reconciliation: the last run's drift per provider as
Prometheus gauges (read from the record store at most every ``ttl_s`` seconds, when
``/metrics`` is scraped) and the runs through the admin API."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.records import ReconcileRun, record_store_from_url

if TYPE_CHECKING:
    from tokenstile.gateway.runtime import Runtime

log = logging.getLogger("tokenstile.reconcile")


async def read_runs(database_url: str, *, latest: bool = False, limit: int = 50,
                    provider: str | None = None) -> list[ReconcileRun]:
    store = record_store_from_url(database_url)
    await store.open()
    try:
        return await (store.latest_runs() if latest else store.runs(limit, provider))
    finally:
        await store.close()


class DriftGauges:
    """Keeps ``tokenstile_reconcile_drift_*`` in step with the stored runs."""

    def __init__(self, rt: Runtime, ttl_s: float = 30.0) -> None:
        self.rt = rt
        self.ttl_s = ttl_s
        self._next = 0.0

    async def refresh(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.ttl_s
        try:
            runs = await asyncio.wait_for(
                read_runs(self.rt.config.storage.database, latest=True), 2.0)
        except (StoreUnavailable, OSError, ValueError, TimeoutError) as exc:
            log.debug("reconcile runs unreadable: %s", exc)  # a scrape never waits on it
            return
        for run in runs:
            self.rt.metrics.observe_reconcile(run.provider, run.drift_nano, run.drift_tokens,
                                              run.ts)
