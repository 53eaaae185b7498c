"""What the gateway tells the outside about each finished request: a JSON access line and
an OpenTelemetry span (Prometheus metrics live in ``tokenstile.metrics``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tokenstile.clock import Clock
from tokenstile.observability.logs import log_access
from tokenstile.observability.tracing import PROVIDERS, Shutdown, record_span, tracer_from_env

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from tokenstile.config import UpstreamConfig
    from tokenstile.types import Arrival, LedgerRow

log = logging.getLogger("tokenstile.observability")

__all__ = ["Telemetry"]


class Telemetry:
    """Called once per request when it has finished; never raises into the request path."""

    def __init__(self, clock: Clock, tracer: Tracer | None = None,
                 shutdown: Shutdown | None = None) -> None:
        self.clock = clock
        self.tracer = tracer
        self._shutdown = shutdown

    @classmethod
    def from_env(cls, clock: Clock) -> Telemetry:
        return cls(clock, *tracer_from_env())

    def close(self) -> None:
        """Export the spans still buffered (uvicorn ends a worker by re-raising its
        SIGTERM once the app has stopped, so exit hooks do not run)."""
        shutdown, self._shutdown = self._shutdown, None
        if shutdown is not None:
            try:
                shutdown()
            except Exception:
                log.exception("flushing the trace exporter failed")

    def finished(self, ctx: Arrival, row: LedgerRow | None,
                 upstreams: Mapping[str, UpstreamConfig]) -> None:
        """``row`` is the ledger row, or None for a request refused before it had a
        caller (no row is written for those, but they are logged and traced)."""
        try:
            if row is None:
                row = ctx.ledger_row((self.clock.monotonic() - ctx.started) * 1000)
            trace_id = None
            if self.tracer is not None:
                upstream = upstreams.get(row.upstream) if row.upstream else None
                provider = PROVIDERS.get(upstream.kind if upstream is not None else ctx.wire)
                trace_id = record_span(self.tracer, row, provider, ctx.headers)
            log_access(row, authenticated=ctx.caller is not None, trace_id=trace_id)
        except Exception:
            log.exception("reporting request %s to the logs and traces failed", ctx.id)
