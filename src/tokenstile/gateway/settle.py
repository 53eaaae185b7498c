"""Settle: what a finished request leaves behind, whatever way it ended.

Price the call, keep its answer in the cache, write its ledger row, report it (metrics,
access log, trace), and only once the row is written settle its reservation: until then
the reservation is what bills the call if the gateway dies. Then the budget thresholds
its usage crossed are announced (off the hot path: the alert engine delivers them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tokenstile.alerts.rules import limit_threshold_alerts
from tokenstile.gateway.pricing import price_call
from tokenstile.limits.admission import actual
from tokenstile.types import Arrival, LedgerRow, RequestContext

if TYPE_CHECKING:
    from tokenstile.alerts.engine import AlertEngine
    from tokenstile.clock import Clock
    from tokenstile.config import UpstreamConfig
    from tokenstile.gateway.caching import CacheStage
    from tokenstile.ledger import LedgerWriter
    from tokenstile.limits.admission import Admission
    from tokenstile.metrics import Metrics
    from tokenstile.observability import Telemetry
    from tokenstile.prices import Pricer

log = logging.getLogger("tokenstile.gateway")

# How long a finished request keeps its reservation while its ledger row is written.
ROW_WAIT_S = 2.0


class Settler:
    def __init__(self, pricer: Pricer, caching: CacheStage, ledger: LedgerWriter,
                 metrics: Metrics, telemetry: Telemetry, admission: Admission,
                 alerts: AlertEngine, clock: Clock,
                 upstreams: Mapping[str, UpstreamConfig]) -> None:
        self.pricer = pricer
        self.caching = caching
        self.ledger = ledger
        self.metrics = metrics
        self.telemetry = telemetry
        self.admission = admission
        self.alerts = alerts
        self.clock = clock
        self.upstreams = upstreams

    async def finish(self, call: Arrival) -> None:
        """Price, cache, write the row, report, then settle the reservation."""
        ctx = call if isinstance(call, RequestContext) else None
        if ctx is not None:
            if ctx.background_running:
                return  # billed, reservation and all, when it ends (gateway.background)
            try:
                price_call(self.pricer, ctx)
                await self._cache(ctx)
            finally:
                await self.caching.land(ctx)  # identical misses waiting read it now
        if call.caller is None:
            self.metrics.unauthenticated(call)
            self.telemetry.finished(call, None, self.upstreams)
            return
        row = call.ledger_row((self.clock.monotonic() - call.started) * 1000)
        self.metrics.observe(row)
        self.telemetry.finished(call, row, self.upstreams)
        ticket = ctx.ticket if ctx is not None else None
        if ticket is None or not ticket.held:
            self.ledger.submit(row)
        else:
            # The reservation bills this call if the gateway dies before its row is
            # written (claimed and charged at its estimate), so it is settled only then.
            await self.ledger.submit_and_wait(row, ROW_WAIT_S)
        if ctx is not None:
            await self._settle(ctx)

    async def write_row(self, row: LedgerRow) -> None:
        """A row of its own (an attempt that may have been billed), written before the
        reservation that stands for it is settled."""
        self.metrics.observe(row)
        await self.ledger.submit_and_wait(row, ROW_WAIT_S)

    async def _cache(self, ctx: RequestContext) -> None:
        if ctx.cache_body is None or ctx.status != 200 or ctx.outcome != "ok" or \
                ctx.cache_plan is None:
            return
        try:
            await self.caching.store(ctx, ctx.cache_plan, ctx.cache_body)
        except Exception:
            log.exception("caching the answer of %s failed", ctx.id)

    async def _settle(self, ctx: RequestContext) -> None:
        try:
            note = await self.admission.settle(ctx.ticket, ctx.usage, ctx.cost_nano)
            if note is not None:
                ctx.flags.append(note)
            self._announce_thresholds(ctx)
        except Exception:
            log.exception("settling request %s failed", ctx.id)

    def _announce_thresholds(self, ctx: RequestContext) -> None:
        """Budget thresholds this request's usage crossed (once per threshold and window:
        the engine remembers what it sent)."""
        ticket = ctx.ticket
        if ticket is None or not ticket.metered:
            return
        now = self.clock.now()
        for item in ticket.applied:
            if item.charge_index >= 0 and not item.limit.shadow:
                after = item.used + actual(item.limit.unit, ctx.usage, ctx.cost_nano)
                self.alerts.submit_all(limit_threshold_alerts(
                    item.limit, item.scope_id, item.used, after, now))
