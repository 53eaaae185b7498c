"""Prometheus metrics, with label values kept to bounded sets.

Model labels are kept only for models the gateway can price or route explicitly (others are
``other``); per-user and per-key labels are never used, so a stranger cannot grow the
series count by inventing names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tokenstile.types import LedgerRow

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                    30, 60, 120)


class Metrics:
    def __init__(self, model_known: Callable[[str], bool] | None = None) -> None:
        self.registry = CollectorRegistry()
        self._model_known = model_known or (lambda model: False)
        self._known_models: dict[str, str] = {}
        # a metric's child per label values: prometheus_client's ``labels`` takes a lock and
        # checks every value each call; each request's row looks up five or six
        self._children: dict[tuple[object, ...], Any] = {}
        r = self.registry
        self.requests = Counter("tokenstile_requests", "Requests served, by outcome",
                                ["api", "model", "project", "outcome"], registry=r)
        self.tokens = Counter("tokenstile_tokens", "Tokens billed",
                              ["kind", "model", "project"], registry=r)
        self.cost = Counter("tokenstile_cost_usd", "Cost billed in USD",
                            ["model", "project"], registry=r)
        self.blocks = Counter("tokenstile_blocks", "Requests refused, by reason",
                              ["reason"], registry=r)
        self.degradations = Counter("tokenstile_degradations", "Degraded answers, by kind",
                                    ["kind"], registry=r)
        self.upstream_errors = Counter("tokenstile_upstream_errors",
                                       "Upstream errors by upstream and status",
                                       ["upstream", "status"], registry=r)
        self.store_errors = Counter("tokenstile_store_errors",
                                    "Counter-store and database errors", ["store"], registry=r)
        self.unauthenticated_total = Counter("tokenstile_unauthenticated",
                                             "Requests refused before authentication",
                                             registry=r)
        self.latency = Histogram("tokenstile_request_latency_seconds",
                                 "Time from request to last byte", ["api"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("tokenstile_time_to_first_byte_seconds",
                              "Time from request to the upstream's first byte", ["api"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("tokenstile_throttle_queue_depth",
                                 "Requests waiting in throttle queues in this process",
                                 registry=r)
        self.queue_depth_total = Gauge(
            "tokenstile_throttle_queue_depth_total",
            "Requests waiting in throttle queues in every process sharing the counter store "
            "(as of the last slot this process saw given out)", registry=r)
        self.ledger_backlog = Gauge("tokenstile_ledger_backlog",
                                    "Ledger rows waiting to be written", registry=r)
        self.cache = Counter("tokenstile_cache", "Response cache lookups", ["result"],
                             registry=r)
        self.alerts = Counter("tokenstile_alerts", "Alerts fired", ["kind"], registry=r)
        self.reconcile_drift_usd = Gauge(
            "tokenstile_reconcile_drift_usd",
            "The provider's reported cost minus the ledger's, at the last reconciliation",
            ["provider"], registry=r)
        self.reconcile_drift_tokens = Gauge(
            "tokenstile_reconcile_drift_tokens",
            "The provider's reported tokens minus the ledger's, at the last reconciliation",
            ["provider"], registry=r)
        self.reconcile_last_run = Gauge(
            "tokenstile_reconcile_last_run_timestamp_seconds",
            "When the last reconciliation with the provider ran", ["provider"], registry=r)

    def set_model_known(self, model_known: Callable[[str], bool]) -> None:
        """Which models get a label of their own, after a reload changed the routes or
        prices (those counted as ``other`` so far keep their series)."""
        self._model_known = model_known
        self._known_models = {}

    def _model(self, model: str | None) -> str:
        if not model:
            return "none"
        label = self._known_models.get(model)
        if label is None:
            label = model if self._model_known(model) else "other"
            if len(self._known_models) < 10_000:
                self._known_models[model] = label
        return label

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered (label values are bounded sets)."""
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*values)
            if len(self._children) < 10_000:
                self._children[key] = child
        return child

    def observe(self, row: LedgerRow) -> None:
        model = self._model(row.served_model or row.requested_model)
        project = row.project or "none"
        child = self._child
        child(self.requests, row.api, model, project, row.outcome).inc()
        if row.input_tokens or row.output_tokens:
            child(self.tokens, "input", model, project).inc(row.input_tokens)
            child(self.tokens, "output", model, project).inc(row.output_tokens)
            if row.cached_input_tokens:
                child(self.tokens, "cached", model, project).inc(row.cached_input_tokens)
        if row.cost_nano:
            child(self.cost, model, project).inc(row.cost_nano / 1e9)
        if row.outcome == "blocked" and row.block_reason:
            child(self.blocks, row.block_reason).inc()
        elif row.outcome == "upstream_error":
            child(self.upstream_errors, row.upstream or "none", str(row.status)).inc()
        for kind in row.degraded:
            child(self.degradations, kind).inc()
        if row.cache:
            child(self.cache, row.cache).inc()
        child(self.latency, row.api).observe(row.latency_ms / 1000)
        if row.ttfb_ms is not None:
            child(self.ttfb, row.api).observe(row.ttfb_ms / 1000)

    def observe_reconcile(self, provider: str, drift_nano: int, drift_tokens: int,
                          ts: float) -> None:
        """The last reconciliation's drift (provider is openai or anthropic: bounded)."""
        self.reconcile_drift_usd.labels(provider).set(drift_nano / 1e9)
        self.reconcile_drift_tokens.labels(provider).set(drift_tokens)
        self.reconcile_last_run.labels(provider).set(ts)

    def store_error(self, store: str) -> None:
        """A call to a store failed (``counters``: Redis or SQLite counters)."""
        self.store_errors.labels(store).inc()

    def unauthenticated(self, ctx: object) -> None:
        self.unauthenticated_total.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
