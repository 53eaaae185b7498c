"""OpenTelemetry traces: off by default, on by the standard ``OTEL_*`` variables, one span
per proxied request with the GenAI semantic conventions' attributes."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import tokenstile.observability as observability
from tests.conftest import UPSTREAM_KEY, FakeHandle, settled
from tests.observability.conftest import leaked, served_gateway
from tokenstile.observability import tracing
from tokenstile.observability.tracing import exporter_names, tracer_from_env, traces_requested

CHAT = {"model": "gpt-4o-mini", "max_tokens": 6,
        "messages": [{"role": "user", "content": "trace me"}]}


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Gateways built in this test write their spans here (as the env would configure)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(observability, "tracer_from_env",
                        lambda: (provider.get_tracer("tokenstile"), None))
    yield exporter
    provider.shutdown()


def finished(exporter: InMemorySpanExporter, count: int) -> tuple[ReadableSpan, ...]:
    return settled(exporter.get_finished_spans, lambda spans: len(spans) >= count)


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    finished = settled(exporter.get_finished_spans, bool)
    assert len(finished) == 1, [s.name for s in finished]
    return finished[0]


def test_a_chat_call_is_one_client_span_in_the_genai_conventions(
        make_gateway: Any, spans: InMemorySpanExporter) -> None:
    gateway = make_gateway()
    key = gateway.key(project="obs", user="olga")
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    raw = api.chat.completions.with_raw_response.create(**CHAT)
    answer = raw.parse()
    span = only(spans)
    row = gateway.rows()[0]
    attrs = dict(span.attributes or {})
    assert span.name == "chat gpt-4o-mini" and span.kind == SpanKind.CLIENT
    assert answer.usage is not None
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens > 0
    assert attrs["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens == 6
    assert attrs["tokenstile.request_id"] == raw.headers["x-tokenstile-request-id"] == row.id
    assert attrs["tokenstile.cost_usd"] == row.cost_nano / 1e9 > 0
    assert attrs["tokenstile.outcome"] == "ok" and attrs["tokenstile.project"] == "obs"
    assert attrs["http.response.status_code"] == 200 and "error.type" not in attrs
    assert span.status.status_code == StatusCode.UNSET
    assert span.end_time is not None and span.start_time is not None
    assert 0 < (span.end_time - span.start_time) / 1e6 <= row.latency_ms + 5
    assert not leaked(str(attrs), key)


def test_streams_embeddings_anthropic_and_refusals_each_get_their_span(
        make_gateway: Any, fake: FakeHandle, spans: InMemorySpanExporter) -> None:
    gateway = make_gateway({
        "upstreams": {"anthropic": {"kind": "anthropic", "base_url": fake.url,
                                    "api_key": UPSTREAM_KEY}},
        "projects": {"tight": {"daily_limit": 20}}})
    key = gateway.key()
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    list(api.chat.completions.create(**CHAT, stream=True,
                                     stream_options={"include_usage": True}))
    api.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=5,
        messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(project="tight"),
                      max_retries=0).chat.completions.create(**{**CHAT, "max_tokens": 99})
    streamed, embedded, messages, refused = finished(spans, 4)
    assert streamed.attributes is not None and embedded.attributes is not None
    assert messages.attributes is not None and refused.attributes is not None
    assert streamed.attributes["gen_ai.usage.output_tokens"] == 6
    assert embedded.name == "embeddings text-embedding-3-small"
    assert embedded.attributes["gen_ai.operation.name"] == "embeddings"
    assert embedded.attributes["gen_ai.usage.input_tokens"] > 0
    assert messages.attributes["gen_ai.provider.name"] == "anthropic"
    assert messages.attributes["gen_ai.usage.output_tokens"] == 5
    assert refused.attributes["tokenstile.outcome"] == "blocked"
    assert refused.attributes["http.response.status_code"] == 429
    assert refused.attributes["error.type"] == refused.attributes["tokenstile.block_reason"]
    assert refused.attributes["gen_ai.usage.output_tokens"] == 0


def test_the_span_joins_the_callers_trace(make_gateway: Any,
                                          spans: InMemorySpanExporter) -> None:
    gateway = make_gateway()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(), max_retries=0) \
        .chat.completions.create(**CHAT, extra_headers={
            "traceparent": f"00-{trace_id}-{parent_id}-01"})
    span = only(spans)
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_id
    assert f"{span.context.trace_id:032x}" == trace_id


def test_an_upstream_failure_is_an_error_span(make_gateway: Any,
                                              spans: InMemorySpanExporter) -> None:
    gateway = make_gateway({"resilience": {"retries": 0}})
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(), max_retries=0) \
            .chat.completions.create(**{**CHAT, "messages": [
                {"role": "user", "content": "[[fake:status=500]]"}]})
    span = only(spans)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"]


def test_traces_are_off_unless_the_environment_asks() -> None:
    assert not traces_requested({})
    assert not traces_requested({"OTEL_SERVICE_NAME": "gw"})
    assert not traces_requested({"OTEL_TRACES_EXPORTER": "none"})
    assert not traces_requested({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert traces_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert traces_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert traces_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracer_from_env({}) == (None, None)
    assert tracer_from_env({"OTEL_SDK_DISABLED": "true",
                            "OTEL_TRACES_EXPORTER": "console"}) == (None, None)


def test_otlp_follows_the_protocol_variables() -> None:
    assert exporter_names({}) == ["otlp_proto_http"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp,console"}) == \
        ["otlp_proto_http", "console"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp",
                           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == ["otlp_proto_grpc"]
    assert exporter_names({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}) == \
        ["otlp_proto_http"]


def test_without_the_sdk_the_gateway_warns_once_and_serves_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tracing, "_warned", False)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    env = {"OTEL_TRACES_EXPORTER": "otlp"}
    with caplog.at_level(logging.WARNING, logger="tokenstile.tracing"):
        assert tracer_from_env(env) == (None, None)
        assert tracer_from_env(env) == (None, None)
    warnings = [r.getMessage() for r in caplog.records if r.name == "tokenstile.tracing"]
    assert len(warnings) == 1 and "tokenstile[otel]" in warnings[0]


def test_an_unknown_exporter_is_named(monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tracing, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="tokenstile.tracing"):
        assert tracer_from_env({"OTEL_TRACES_EXPORTER": "zipkin_json"}) == (None, None)
    assert "'zipkin_json'" in caplog.text


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_served_gateway_exports_otlp_spans_from_the_environment(
        fake: FakeHandle, tmp_path: Path) -> None:
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
           "OTEL_SERVICE_NAME": "gateway-under-test",
           # far longer than the test: the spans must be flushed when the gateway stops
           "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    try:
        proc, key = served_gateway(tmp_path, fake, env=env)
        try:
            openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0) \
                .chat.completions.create(**CHAT)
        finally:
            assert proc.stop() in (0, -15)
    finally:
        collector.shutdown()
        collector.server_close()
        thread.join(5)
    assert [path for path, _ in _Collector.received] == ["/v1/traces"]
    export = ExportTraceServiceRequest.FromString(_Collector.received[0][1])
    (resource_spans,) = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "gateway-under-test"
    (span,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    attrs = {a.key: a.value for a in span.attributes}
    assert span.name == "chat gpt-4o-mini"
    assert attrs["gen_ai.request.model"].string_value == "gpt-4o-mini"
    assert attrs["gen_ai.usage.output_tokens"].int_value == 6
    assert attrs["tokenstile.request_id"].string_value.startswith("req_")
    assert not leaked(_Collector.received[0][1].decode(errors="replace"), key)


def test_the_service_is_named_by_the_sdks_variables_else_tokenstile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def service() -> object:
        tracer, shutdown = tracer_from_env({"OTEL_TRACES_EXPORTER": "console"})
        assert tracer is not None and shutdown is not None
        shutdown()
        return tracer.resource.attributes["service.name"]  # type: ignore[attr-defined]

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service() == "tokenstile"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing-gw,team=infra")
    assert service() == "billing-gw"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gw")
    assert service() == "edge-gw"
