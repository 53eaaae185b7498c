"""OpenTelemetry traces: one span per proxied request, in the GenAI semantic conventions.

Off unless the standard ``OTEL_*`` variables ask for traces (``OTEL_TRACES_EXPORTER``, or
an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``), and never with ``OTEL_SDK_DISABLED=true``.
The SDK and the OTLP exporter are the ``[otel]`` extra and are imported only then; without
them the gateway says so once and serves on. A tracer provider configured already in the
process (``opentelemetry-instrument``, or an application embedding tokenstile) is used
as it is.

The span is written when the request has finished (its ledger row is known), with the
request's real start and end times, under the caller's ``traceparent`` if it sent one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from tokenstile.types import LedgerRow

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger("tokenstile.tracing")

INSTRUMENTATION = "tokenstile"

# gen_ai.operation.name per API; OpenAI's Responses and Anthropic's Messages are chats.
OPERATIONS = {"chat": "chat", "responses": "chat", "messages": "chat", "converse": "chat",
              "completions": "text_completion", "embeddings": "embeddings",
              "count_tokens": "count_tokens", "generate_content": "chat",
              "embed_content": "embeddings", "batch_embed_contents": "embeddings"}
# gen_ai.provider.name per upstream kind.
PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic",
             "bedrock": "aws.bedrock", "gemini": "gcp.gemini"}

_EXPORTER_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_warned = False


def traces_requested(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """Entry-point names in ``opentelemetry_traces_exporter`` for ``OTEL_TRACES_EXPORTER``
    (``otlp`` follows ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``, http/protobuf by default,
    as the specification says)."""
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
             if n.strip() and n.strip().lower() != "none"]
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    return [_EXPORTER_BY_PROTOCOL.get(protocol, f"otlp_{protocol}") if n == "otlp" else n
            for n in names]


def _warn_once(message: str, *args: object) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(message, *args)


Shutdown = Callable[[], object]


def tracer_from_env(env: Mapping[str, str] | None = None
                    ) -> tuple[Tracer | None, Shutdown | None]:
    """The tracer the gateway writes spans to (None when traces are off), and how to flush
    and close what was built for it here (None when it is someone else's to close)."""
    env = os.environ if env is None else env
    try:
        from opentelemetry import trace
    except ImportError:
        trace = None  # type: ignore[assignment]
    if trace is not None and _configured_elsewhere(trace):
        return trace.get_tracer(INSTRUMENTATION), None
    if not traces_requested(env):
        return None, None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        _warn_once("tokenstile: OTEL_* variables ask for traces but the OpenTelemetry SDK is "
                   "not installed; install tokenstile[otel] (traces stay off)")
        return None, None
    exporters = []
    for name in exporter_names(env):
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            _warn_once("tokenstile: no OpenTelemetry trace exporter named %r is installed "
                       "(OTEL_TRACES_EXPORTER); install tokenstile[otel] (traces stay off)",
                       name)
            return None, None
        exporters.append(next(iter(found)).load()())
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES as the SDK reads them, else our name
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": INSTRUMENTATION}))
    provider = TracerProvider(shutdown_on_exit=False, resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider.get_tracer(INSTRUMENTATION), provider.shutdown


def _configured_elsewhere(trace: Any) -> bool:
    provider = trace.get_tracer_provider()
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def span_attributes(row: LedgerRow, provider: str | None) -> dict[str, Any]:
    """The span's attributes: the GenAI conventions, then tokenstile's own."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": OPERATIONS.get(row.api, row.api),
        "gen_ai.usage.input_tokens": row.input_tokens,
        "gen_ai.usage.output_tokens": row.output_tokens,
        "tokenstile.request_id": row.id,
        "tokenstile.api": row.api,
        "tokenstile.outcome": row.outcome,
        "tokenstile.cost_usd": row.cost_nano / 1e9,
        "http.response.status_code": row.status,
    }
    if provider:
        attrs["gen_ai.provider.name"] = provider
        attrs["gen_ai.system"] = provider  # the name before semantic conventions 1.37
    optional = {
        "gen_ai.request.model": row.requested_model,
        "gen_ai.response.model": row.served_model,
        "gen_ai.usage.cache_read.input_tokens": row.cached_input_tokens or None,
        "gen_ai.usage.cache_creation.input_tokens": row.cache_write_tokens or None,
        "error.type": (row.block_reason or str(row.status)) if row.outcome != "ok" else None,
        "tokenstile.upstream": row.upstream,
        "tokenstile.organization": row.organization,
        "tokenstile.project": row.project,
        "tokenstile.user": row.user,
        "tokenstile.key_id": row.key_id,
        "tokenstile.feature": row.feature,
        "tokenstile.block_reason": row.block_reason,
        "tokenstile.cache": row.cache,
        "tokenstile.estimated": row.estimated or None,
        "tokenstile.degraded": tuple(row.degraded) or None,
    }
    attrs.update((k, v) for k, v in optional.items() if v is not None)
    return attrs


def record_span(tracer: Tracer, row: LedgerRow, provider: str | None,
                headers: Mapping[str, str]) -> str | None:
    """Write the finished request's span; its trace id (hex), for the access log."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    end = time.time_ns()
    start = end - int(row.latency_ms * 1e6)
    operation = OPERATIONS.get(row.api, row.api)
    name = f"{operation} {row.requested_model}" if row.requested_model else operation
    span = tracer.start_span(name, context=propagate.extract(dict(headers)),
                             kind=SpanKind.CLIENT, start_time=start,
                             attributes=span_attributes(row, provider))
    if row.status >= 500 or row.outcome in ("error", "upstream_error"):
        span.set_status(Status(StatusCode.ERROR, row.block_reason or f"status {row.status}"))
    span.end(end_time=end)
    context = span.get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None
