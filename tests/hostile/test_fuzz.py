"""Fuzzing: the parsers and the whole proxy route take whatever hypothesis makes of a
request and answer a clear 4xx or serve it; nothing crashes, nothing is a 500 of the
gateway's own, and every refusal is in the provider's shape."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FakeHandle, Gateway
from tokenstile.app import PROXY_ROUTES
from tokenstile.errors import GatewayError
from tokenstile.providers.anthropic import AnthropicAdapter
from tokenstile.providers.bedrock import BedrockAdapter
from tokenstile.providers.embeddings_over_gemini import EmbeddingsOverGemini
from tokenstile.providers.gemini import GeminiAdapter
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.providers.translate import ChatOverMessages, chat_to_messages
from tokenstile.types import ApiKind

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

# -- strategies -------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=30) | st.sampled_from(["", "user", "system", "text", "\x00",
                                                     "\u202e\u200b", "😀" * 3]))
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=20)

ROLES = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function",
                         "USER", ""]) | st.text(max_size=8)
PART_TYPES = st.sampled_from(["text", "image_url", "input_text", "image", "tool_use",
                              "tool_result", "document", "input_audio", "file", "?"])
parts = st.fixed_dictionaries({"type": PART_TYPES}, optional={
    "text": json_values, "image_url": json_values, "source": json_values,
    "content": json_values, "id": json_values, "input": json_values, "name": json_values,
    "tool_use_id": json_values, "cache_control": json_values})
contents = st.text(max_size=60) | st.lists(parts, max_size=4) | json_values
messages = st.lists(st.fixed_dictionaries({"role": ROLES}, optional={
    "content": contents, "name": json_values, "tool_calls": json_values,
    "tool_call_id": json_values, "function_call": json_values}) | json_values, max_size=6)
KEYS = {
    "model": st.sampled_from(["gpt-4o-mini", "gpt-4o", "o4-mini", "claude-haiku-4-5",
                              "text-embedding-3-small", "", "x" * 300]) | json_values,
    "messages": messages, "max_tokens": st.integers(-5, 2**64) | json_values,
    "max_completion_tokens": st.integers(-5, 10**6) | json_values,
    "max_output_tokens": st.integers(-5, 10**6) | json_values,
    "stream": st.booleans() | json_values, "stream_options": json_values,
    "tools": json_values, "functions": json_values, "tool_choice": json_values,
    "prompt": st.text(max_size=40) | json_values, "input": contents,
    "instructions": json_values, "system": contents, "n": st.integers(-2, 20) | json_values,
    "best_of": json_values, "user": json_values, "metadata": json_values,
    "response_format": json_values, "temperature": json_values, "stop": json_values,
    "logit_bias": json_values, "thinking": json_values, "safety_identifier": json_values,
}
bodies = st.fixed_dictionaries({}, optional=KEYS) | st.dictionaries(
    st.text(max_size=10), json_values, max_size=5)
HI = [{"role": "user", "content": "hi"}]
VALID = [
    {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 10},
    {"model": "claude-haiku-4-5", "messages": HI, "max_tokens": 10},
    {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 10},
    {"model": "text-embedding-3-small", "input": "hi"},
    {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 5},
]
# A valid request with a few fields replaced: reaches admission, forwarding and relaying.
near_valid = st.builds(lambda base, extra: {**base, **extra}, st.sampled_from(VALID),
                       st.fixed_dictionaries({}, optional=KEYS))
APIS: list[tuple[ApiKind, Any]] = [
    ("chat", OpenAIAdapter()), ("completions", OpenAIAdapter()),
    ("embeddings", OpenAIAdapter()), ("responses", OpenAIAdapter()),
    ("messages", AnthropicAdapter()), ("count_tokens", AnthropicAdapter())]


def as_received(body: Any) -> Any:
    """The body as the gateway would have it: through JSON (integers past 64 bits come back
    as floats from orjson, as they do from a client)."""
    return orjson.loads(json.dumps(body))


def client_error(exc: GatewayError) -> None:
    assert 400 <= exc.status < 500, (exc.status, exc.message)
    assert exc.message.startswith("tokenstile: ")


# -- the parsers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("api", "adapter"), APIS, ids=[a for a, _ in APIS])
@SETTINGS
@given(body=near_valid | bodies)
def test_parse_and_count_take_anything(api: ApiKind, adapter: Any, body: dict[str, Any]
                                       ) -> None:
    try:
        req = adapter.parse(api, as_received(body))
    except GatewayError as exc:
        client_error(exc)
        return
    req.input_tokens = count = adapter.count_input(req)
    assert isinstance(count, int) and count >= 0
    orjson.dumps(adapter.upstream_body(req))
    observer = adapter.observer(req)
    observer.on_event(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n')
    assert isinstance(observer.output_text(), str)


@SETTINGS
@given(body=bodies)
def test_chat_to_messages_takes_anything(body: dict[str, Any]) -> None:
    body = as_received(body)
    try:
        out = chat_to_messages(body)
    except GatewayError as exc:
        client_error(exc)
        return
    assert isinstance(out, dict)
    orjson.dumps(out)
    try:
        bridge = ChatOverMessages(body, 1024)
        assert bridge.count_input() >= 0
    except GatewayError as exc:
        client_error(exc)


# Bodies of the embedding routes whose model is in the URL: Gemini's embedContent and
# batchEmbedContents, Bedrock's Titan InvokeModel.
gemini_parts = st.lists(st.fixed_dictionaries({}, optional={
    "text": st.text(max_size=30) | json_values, "inlineData": json_values,
    "fileData": json_values}) | json_values, max_size=4)
gemini_content = st.fixed_dictionaries({"parts": gemini_parts}, optional={
    "role": json_values}) | json_values
EMBED_KEYS = {
    "content": gemini_content, "title": st.text(max_size=20) | json_values,
    "taskType": json_values, "outputDimensionality": json_values,
    "requests": st.lists(st.fixed_dictionaries({}, optional={
        "model": st.sampled_from(["models/gemini-embedding-001", "models/other"])
        | json_values, "content": gemini_content, "title": json_values}) | json_values,
        max_size=4) | json_values,
    "inputText": st.text(max_size=40) | json_values,
    "dimensions": st.sampled_from([256, 512, 1024]) | json_values,
    "normalize": json_values, "embeddingTypes": json_values,
}
embed_bodies = st.fixed_dictionaries({}, optional=EMBED_KEYS) | bodies
ROUTED: list[tuple[ApiKind, Any, str]] = [
    ("embed_content", GeminiAdapter(), "gemini-embedding-001"),
    ("batch_embed_contents", GeminiAdapter(), "gemini-embedding-001"),
    ("embeddings", BedrockAdapter(), "amazon.titan-embed-text-v2:0")]


@pytest.mark.parametrize(("api", "adapter", "model"), ROUTED, ids=[a for a, _, _ in ROUTED])
@SETTINGS
@given(body=embed_bodies, answer=json_values)
def test_embedding_routes_take_anything(api: ApiKind, adapter: Any, model: str,
                                        body: dict[str, Any], answer: Any) -> None:
    body = {**as_received(body), "model": model, "stream": False}
    try:
        req = adapter.parse(api, body)
    except GatewayError as exc:
        client_error(exc)
        return
    assert req.output_cap == 0
    count = adapter.count_input(req)
    assert isinstance(count, int) and count >= 0
    forwarded = adapter.upstream_body(req)
    assert "model" not in forwarded and "stream" not in forwarded
    orjson.dumps(forwarded)
    usage = adapter.usage_from_body(api, as_received(answer))
    assert usage is None or usage.input_tokens >= 0


VECTORS = st.fixed_dictionaries({"embeddings": st.lists(st.fixed_dictionaries({
    "values": st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32)
                       | st.integers(-5, 5) | st.just(1e300) | scalars, max_size=4)
                       | json_values}),
    max_size=3)})


near_valid_embeddings = st.builds(
    lambda extra: {"model": "gemini-embedding-001", "input": ["a", "b"], **extra},
    st.fixed_dictionaries({}, optional={k: KEYS[k] for k in ("input", "stream", "user")}))


@SETTINGS
@given(body=near_valid_embeddings | bodies, answer=VECTORS | json_values,
       packed=st.booleans())
def test_embeddings_over_gemini_take_anything(body: dict[str, Any], answer: Any,
                                              packed: bool) -> None:
    body = as_received(body)
    if packed:
        body["encoding_format"] = "base64"
    try:
        bridge = EmbeddingsOverGemini(body, 1024)
    except GatewayError as exc:
        client_error(exc)
        return
    assert bridge.count_input() >= 0
    parsed = as_received(answer)
    translated, _ = bridge.response_body(orjson.dumps(parsed), parsed)
    orjson.loads(translated)


# -- the whole route, in process --------------------------------------------------------------

HEADER_NAMES = st.sampled_from([
    "x-tokenstile-feature", "x-tokenstile-tags", "x-tokenstile-trace-id",
    "x-tokenstile-max-tokens", "x-tokenstile-policy", "x-usagepanda-max-tokens",
    "anthropic-version", "anthropic-beta", "openai-beta", "accept", "content-type",
    "x-tokenstile-cache", "cache-control", "content-length-x"])
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


async def asgi_call(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
                    ) -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8700)}
    delivered = False
    status = 0
    out: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            out.append(message.get("body", b""))

    await asyncio.wait_for(app(scope, receive, send), 20)
    return status, b"".join(out)


@pytest.fixture
def fuzz_gateway(make_gateway: Any, fake: FakeHandle, tmp_path: Any) -> Gateway:
    gateway: Gateway = make_gateway({
        "upstreams": {"anthropic": {"kind": "anthropic", "base_url": fake.url,
                                    "api_key": "sk-ant-fuzz"}},
        "storage": {"counters": f"sqlite:///{tmp_path}/fuzz-counters.db"},
        "projects": {"demo": {"daily_limit": 10**12, "request_limit": 10**9,
                              "daily_budget_usd": 10**6}},
        "server": {"max_messages": 50},
    })
    return gateway


def check_answer(path: str, status: int, payload: bytes) -> None:
    assert status != 0, "no response"
    assert status < 500, (status, payload[:500])
    if status >= 400 and b"tokenstile: " in payload:
        data = orjson.loads(payload)
        if path.startswith("/v1/messages"):
            assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
        else:
            assert set(data["error"]) == {"message", "type", "param", "code"}


@SETTINGS
@given(path=st.sampled_from(sorted(PROXY_ROUTES)), body=near_valid | bodies,
       extra=st.dictionaries(HEADER_NAMES, header_values, max_size=3))
def test_the_proxy_route_takes_any_json(fuzz_gateway: Gateway, caplog: pytest.LogCaptureFixture,
                                        path: str, body: dict[str, Any],
                                        extra: dict[str, str]) -> None:
    key = fuzz_gateway.__dict__.setdefault("fuzz_key", fuzz_gateway.key(project="demo"))
    headers = [(b"authorization", f"Bearer {key}".encode()),
               (b"content-type", b"application/json"),
               *((k.encode(), v.encode("latin-1")) for k, v in extra.items())]
    with caplog.at_level(logging.ERROR):
        status, payload = fuzz_gateway.run(asgi_call(
            fuzz_gateway.app, path, json.dumps(body).encode(), headers), timeout=30)
    check_answer(path, status, payload)
    assert not [r for r in caplog.records if "inside the gateway" in r.getMessage()]


@SETTINGS
@given(path=st.sampled_from(sorted(PROXY_ROUTES)),
       raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_the_proxy_route_takes_any_bytes(fuzz_gateway: Gateway, path: str, raw: bytes) -> None:
    key = fuzz_gateway.__dict__.setdefault("fuzz_key", fuzz_gateway.key(project="demo"))
    headers = [(b"authorization", f"Bearer {key}".encode())]
    status, payload = fuzz_gateway.run(asgi_call(fuzz_gateway.app, path, raw, headers),
                                       timeout=30)
    check_answer(path, status, payload)
