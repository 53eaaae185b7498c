"""Bedrock's wire format as plain values: event stream frames (written here, read by
botocore), Converse requests and usage, output caps inside ``inferenceConfig``, lazy
decoding of relayed streams, translation to and from chat completions, routing and config,
errors, and the fake's SigV4 check against the gateway's botocore signatures."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile import test_fuzz as fuzz
from tokenstile import tokens
from tokenstile.clock import FakeClock
from tokenstile.config import ConfigError, UpstreamConfig, parse_config
from tokenstile.errors import GatewayError, bedrock_stream_error_type
from tokenstile.gateway.aws import AwsSigner
from tokenstile.gateway.counted import ReasoningTimer
from tokenstile.gateway.routing import Router
from tokenstile.gateway.upstream import upstream_headers, upstream_url
from tokenstile.limits.caps import cap_value, set_output_cap
from tokenstile.providers import eventstream
from tokenstile.providers.bedrock import BedrockAdapter, chunk_frame, forwarded_body
from tokenstile.providers.bedrock_translate import (
    ChatOverConverse,
    ConverseChatTranslator,
    bedrock_error_to_openai,
    chat_to_converse,
    converse_to_chat,
)
from tokenstile.providers.converse import count_converse, usage_from_converse
from tokenstile.providers.terms import price_terms
from tokenstile.testing._fake_bedrock import converse_stream, verify_sigv4
from tokenstile.testing._fake_core import NORMAL, plan_reply
from tokenstile.testing._fake_wire import Turn
from tokenstile.types import CanonicalRequest, Usage

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
ADAPTER = BedrockAdapter()


def converse(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "stream": False, "messages": [
        {"role": "user", "content": [{"text": "Hello there"}]}]}
    body.update(fields)
    return body


def turn(output_tokens: int = 5) -> Turn:
    reply = plan_reply(NORMAL, max_tokens=None, default_output_tokens=output_tokens,
                       tools=None)
    return Turn(id="", item_id="", call_id="tooluse_1", model=MODEL, created=0,
                input_tokens=20, cached_tokens=4, cache_write_tokens=6, reply=reply,
                request={})


def stream_bytes(t: Turn) -> bytes:
    parts = converse_stream(t, None)
    return parts.head + b"".join(parts.pieces) + parts.tail


# --- event stream frames ------------------------------------------------------------------


def test_frames_written_here_are_read_by_botocore() -> None:
    frame = eventstream.event("contentBlockDelta", {"contentBlockIndex": 0,
                                                    "delta": {"text": "héllo"}})
    buffer = EventStreamBuffer()
    buffer.add_data(frame + eventstream.exception("throttlingException", "slow down"))
    first, second = list(buffer)
    assert first.headers == {":event-type": "contentBlockDelta",
                             ":content-type": "application/json", ":message-type": "event"}
    assert json.loads(first.payload) == {"contentBlockIndex": 0, "delta": {"text": "héllo"}}
    assert second.headers[":exception-type"] == "throttlingException"
    decoded = eventstream.decode(eventstream.exception("throttlingException", "slow down"))
    assert (decoded.message_type, decoded.name, decoded.json()) == (
        "exception", "throttlingException", {"message": "slow down"})


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100_000])
def test_frames_are_split_whole_whatever_the_chunks(size: int) -> None:
    data = stream_bytes(turn(12))
    splitter = eventstream.FrameSplitter()
    frames = [f for i in range(0, len(data), size) for f in splitter.feed(data[i:i + size])]
    assert b"".join(frames) == data and splitter.rest() == b""
    names = [eventstream.decode(f).name for f in frames]
    assert names[0] == "messageStart" and names[-1] == "metadata"
    assert names.count("contentBlockDelta") == 12


def test_broken_frames_are_a_broken_stream() -> None:
    frame = bytearray(eventstream.event("messageStart", {"role": "assistant"}))
    frame[-6] ^= 0xFF  # the payload, under the message CRC
    with pytest.raises(eventstream.StreamFramingError):
        eventstream.decode(bytes(frame))
    with pytest.raises(eventstream.StreamFramingError):
        eventstream.FrameSplitter().feed(b"\xff\xff\xff\xff" + bytes(12))


# --- Converse requests and usage ----------------------------------------------------------


def test_converse_usage_counts_the_cache_inside_input() -> None:
    usage = usage_from_converse({
        "inputTokens": 10, "outputTokens": 7, "totalTokens": 47, "cacheReadInputTokens": 20,
        "cacheWriteInputTokens": 10,
        "cacheDetails": [{"ttl": "1h", "inputTokens": 4}, {"ttl": "5m", "inputTokens": 6}]},
        {"type": "Priority"})
    assert usage == Usage(input_tokens=40, output_tokens=7, cached_input_tokens=20,
                          cache_write_tokens=10, cache_write_1h_tokens=4,
                          service_tier="priority")
    assert usage_from_converse("nonsense") is None


@pytest.mark.parametrize(("body", "fragment"), [
    ({"messages": []}, "'messages' must be a non-empty array"),
    ({"messages": [{"role": "system", "content": [{"text": "x"}]}]}, "top-level 'system'"),
    ({"messages": [{"role": "user", "content": "plain text"}]}, "array of content blocks"),
    ({"inferenceConfig": {"maxTokens": 0}}, "at least 1"),
    ({"toolConfig": {"tools": "none"}}, "'tools' array"),
])
def test_malformed_converse_requests_are_refused(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(GatewayError) as refused:
        ADAPTER.parse("converse", converse(**body))
    assert refused.value.status == 400 and fragment in refused.value.message
    assert json.loads(refused.value.body("bedrock")) == {"message": refused.value.message}
    assert refused.value.headers_for("bedrock")["x-amzn-errortype"] == "ValidationException"


def test_converse_is_counted_as_the_messages_request_it_amounts_to() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(8) + (200).to_bytes(4, "big")
                           + (100).to_bytes(4, "big") + bytes(200)).decode()
    body = converse(system=[{"text": "Be brief."}], messages=[
        {"role": "user", "content": [{"text": "What is this?"},
                                     {"image": {"format": "png", "source": {"bytes": png}}}]}],
        toolConfig={"tools": [{"toolSpec": {"name": "look", "inputSchema": {
            "json": {"type": "object", "properties": {}}}}}]})
    req = ADAPTER.parse("converse", body)
    assert req.input_text == "What is this?" and req.system_text == "Be brief."
    expected = tokens.count_anthropic(MODEL, [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "data": png}}]}],
        [{"type": "text", "text": "Be brief."}],
        [{"name": "look", "description": None,
          "input_schema": {"type": "object", "properties": {}}}])
    assert ADAPTER.count_input(req) == count_converse(MODEL, body) == expected
    without = {**body, "messages": [{"role": "user", "content": [{"text": "What is this?"}]}]}
    # the 200x100 image at its size (200 * 100 / 750 tokens), not its base64 as text
    assert expected - count_converse(MODEL, without) == 27
    assert req.hidden_input == ()


def test_files_the_gateway_cannot_read_are_hidden_input() -> None:
    body = converse(messages=[{"role": "user", "content": [
        {"text": "Summarize"},
        {"document": {"format": "docx", "name": "spec", "source": {"bytes": "UEsDBA=="}}}]}])
    assert ADAPTER.parse("converse", body).hidden_input == ("document",)
    in_s3 = converse(messages=[{"role": "user", "content": [{"document": {
        "format": "pdf", "name": "spec", "source": {"s3Location": {"uri": "s3://b/k"}}}}]}])
    assert ADAPTER.parse("converse", in_s3).hidden_input == ("document",)
    text = converse(messages=[{"role": "user", "content": [{"document": {
        "format": "txt", "name": "notes",
        "source": {"bytes": base64.b64encode(b"plain notes").decode()}}}]}])
    assert ADAPTER.parse("converse", text).hidden_input == ()


def test_cache_points_and_tiers_are_reserved_at_their_prices() -> None:
    body = converse(system=[{"text": "long"}, {"cachePoint": {"type": "default"}}],
                    serviceTier={"type": "flex"})
    terms = price_terms(ADAPTER.parse("converse", body))
    assert (terms.cache_write, terms.service_tier) == ("5m", "flex")
    longer = converse(messages=[{"role": "user", "content": [
        {"text": "x"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]}])
    assert price_terms(ADAPTER.parse("converse", longer)).cache_write == "1h"


def test_output_caps_are_written_inside_inference_config() -> None:
    req = ADAPTER.parse("converse", converse(inferenceConfig={"temperature": 0.2}))
    assert req.output_cap is None and req.output_cap_field == "inferenceConfig.maxTokens"
    original = req.body
    set_output_cap(req, 64)
    assert req.body["inferenceConfig"] == {"temperature": 0.2, "maxTokens": 64}
    assert original["inferenceConfig"] == {"temperature": 0.2}  # the client's copy
    assert req.output_cap == 64 and cap_value(req.body, req.output_cap_field) == 64
    assert forwarded_body(req.body) == {"messages": req.body["messages"],
                                        "inferenceConfig": {"temperature": 0.2,
                                                            "maxTokens": 64}}


def test_invoke_takes_claudes_body_only() -> None:
    req = ADAPTER.parse("messages", {"model": MODEL, "stream": True, "max_tokens": 9,
                                     "anthropic_version": "bedrock-2023-05-31",
                                     "messages": [{"role": "user", "content": "Hi"}]})
    assert (req.api, req.wire, req.stream, req.output_cap) == ("messages", "bedrock", True, 9)
    assert ADAPTER.upstream_body(req) == {"max_tokens": 9, "messages": req.body["messages"],
                                          "anthropic_version": "bedrock-2023-05-31"}
    with pytest.raises(GatewayError, match="anthropic_version"):
        ADAPTER.parse("messages", {"model": "meta.llama3-8b-instruct-v1:0", "prompt": "hi"})


# --- streams, relayed and lazily decoded --------------------------------------------------


def counting_decoder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = eventstream.decode

    def decode(frame: bytes) -> eventstream.Frame:
        calls[0] += 1
        return real(frame)

    monkeypatch.setattr(eventstream, "decode", decode)
    return calls


def test_a_relayed_stream_decodes_a_few_frames_not_one_per_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_decoder(monkeypatch)
    clock = FakeClock()
    observer = ReasoningTimer(ADAPTER.observer(ADAPTER.parse("converse", converse(
        stream=True))), clock)  # as the relay wraps it
    frames = eventstream.FrameSplitter().feed(stream_bytes(turn(40)))
    assert [observer.on_event(f) for f in frames] == frames  # relayed unchanged
    assert observer.first_visible is not None
    assert calls[0] == 2  # messageStart, then the first delta: the answer has begun
    assert observer.usage == Usage(input_tokens=20, output_tokens=40, cached_input_tokens=4,
                                   cache_write_tokens=6)
    assert observer.usage_is_final() and calls[0] == 3  # and the metadata at the end


def test_a_stream_cut_before_its_usage_is_counted_from_every_frame(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_decoder(monkeypatch)
    observer = ADAPTER.observer(ADAPTER.parse("converse", converse(stream=True)))
    frames = eventstream.FrameSplitter().feed(stream_bytes(turn(12)))[:6]
    for frame in frames:
        observer.on_event(frame)
    assert observer.usage is None and not observer.usage_is_final()
    assert observer.output_text() == "alpha beta gamma delta epsilon"
    assert calls[0] <= len(frames) + 4


def test_an_invoke_stream_finds_its_usage_at_both_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_decoder(monkeypatch)
    observer = ADAPTER.observer(ADAPTER.parse("messages", {
        "model": MODEL, "stream": True, "max_tokens": 50,
        "anthropic_version": "bedrock-2023-05-31",
        "messages": [{"role": "user", "content": "Hi"}]}))
    events = [{"type": "message_start", "message": {"usage": {"input_tokens": 11,
                                                              "output_tokens": 1}}}]
    events += [{"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": f" w{i}"}} for i in range(30)]
    events += [{"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 30}}, {"type": "message_stop"}]
    for event in events:
        observer.on_event(chunk_frame(event))
    assert observer.usage == Usage(input_tokens=11, output_tokens=30)
    assert calls[0] <= 4


# --- chat completions over Converse -------------------------------------------------------


def test_chat_requests_become_converse_requests() -> None:
    png = "data:image/png;base64,iVBORw0KGgo="
    body = chat_to_converse({"model": MODEL, "max_completion_tokens": 30, "top_p": 0.9,
                             "tool_choice": "none", "tools": [{"type": "function", "function": {
                                 "name": "f", "parameters": {"type": "object"}}}],
                             "messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": png}}]},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}]}, 4096)
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "look"}, {"image": {
            "format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "c1", "name": "f",
                                                       "input": {"a": 1}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "c1",
                                                     "content": [{"text": "42"}]}}]}]
    assert body["inferenceConfig"] == {"maxTokens": 30, "topP": 0.9}
    assert body["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "f", "inputSchema": {"json": {"type": "object"}}}}]}  # "none": unforced
    with pytest.raises(GatewayError, match="as bytes"):
        chat_to_converse({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}, 10)


def test_a_budgets_cap_reaches_the_translated_request() -> None:
    source = {"model": "haiku", "messages": [{"role": "user", "content": "hi"}]}
    bridge = ChatOverConverse(source, 4096)
    capped = {**source, "model": MODEL, "max_tokens": 77}
    req = ADAPTER.parse("converse", converse())
    req.body = capped
    assert bridge.upstream_body(req)["inferenceConfig"] == {"maxTokens": 77}
    assert "model" not in bridge.upstream_body(req) and bridge.model == MODEL


def test_converse_answers_and_streams_become_chat_completions() -> None:
    t = turn(3)
    chat = converse_to_chat({"output": {"message": {"role": "assistant", "content": [
        {"text": "hi"}, {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"x": 1}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 2,
                                            "cacheReadInputTokens": 1}}, MODEL)
    assert chat["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "f", "arguments": '{"x":1}'}
    assert chat["choices"][0]["finish_reason"] == "tool_calls"
    assert chat["usage"]["prompt_tokens"] == 6
    translator = ConverseChatTranslator(MODEL, include_usage=True)
    out = b"".join(translator.on_event(f) or b""
                   for f in eventstream.FrameSplitter().feed(stream_bytes(t)))
    chunks = [json.loads(line[6:]) for line in out.split(b"\n\n")
              if line.startswith(b"data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                   if c["choices"]) == "alpha beta gamma"
    assert chunks[-1]["usage"]["prompt_tokens"] == 20 and out.endswith(b"data: [DONE]\n\n")
    assert translator.usage == Usage(input_tokens=20, output_tokens=3, cached_input_tokens=4,
                                     cache_write_tokens=6)
    error = translator.on_event(eventstream.exception("throttlingException", "slow"))
    assert error is None  # the stream was over
    assert json.loads(bedrock_error_to_openai(429, b'{"message": "slow down"}')) == {
        "error": {"message": "slow down", "type": "rate_limit_exceeded", "param": None,
                  "code": None}}


# --- routing, config, URLs and errors -----------------------------------------------------


def test_bedrock_model_ids_go_to_the_bedrock_upstream_by_default() -> None:
    config = parse_config({"upstreams": {
        "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1"},
        "aws": {"kind": "bedrock", "region": "us-east-1"}}}, env={})
    router = Router(config)
    for model in (MODEL, "us.amazon.nova-pro-v1:0", "meta.llama3-1-70b-instruct-v1:0",
                  "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-x"):
        target = router.resolve(model)
        assert (target.upstream, target.wire, target.provider) == ("aws", "bedrock", "aws")
    assert router.resolve("gpt-4o-mini").upstream == "openai"
    assert router.resolve("llama3.1:8b").upstream == "openai"


def test_bedrock_upstream_settings() -> None:
    config = parse_config({"upstreams": {"aws": {"kind": "bedrock", "region": "eu-west-3"}}},
                          env={})
    aws = config.upstreams["aws"]
    assert aws.base_url == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    assert upstream_url(aws, "converse", "arn:aws:bedrock:eu-west-3:1:application-"
                        "inference-profile/abc", stream=True) == (
        "https://bedrock-runtime.eu-west-3.amazonaws.com/model/arn%3Aaws%3Abedrock%3Aeu-west-3"
        "%3A1%3Aapplication-inference-profile%2Fabc/converse-stream")
    assert upstream_url(aws, "messages", MODEL) == (
        f"{aws.base_url}/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke")
    assert upstream_headers(aws, {"x-amzn-bedrock-guardrailidentifier": "g1",
                                  "authorization": "Bearer ts-x"}, None) == {
        "content-type": "application/json", "accept": "application/json",
        "x-amzn-bedrock-guardrailidentifier": "g1"}
    for bad, fragment in [({"kind": "bedrock"}, "needs a region"),
                          ({"kind": "bedrock", "base_url": "http://10.0.0.1"}, "set region"),
                          ({"kind": "openai", "base_url": "http://x", "aws_profile": "p"},
                           "only for upstreams of kind bedrock")]:
        with pytest.raises(ConfigError) as caught:
            parse_config({"upstreams": {"b": bad}}, env={})
        assert fragment in caught.value.errors[0]


def test_a_bedrock_upstream_without_botocore_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "botocore" else real(name, *a))
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": {"aws": {"kind": "bedrock", "region": "us-east-1"}}},
                     env={})
    assert caught.value.errors == ["upstreams.aws.kind: bedrock needs botocore, which is not "
                                   "installed: pip install 'tokenstile[bedrock]'"]


def test_stream_errors_name_members_of_the_stream_unions() -> None:
    assert [bedrock_stream_error_type(s) for s in (429, 422, 502, 503, 500)] == [
        "throttlingException", "validationException", "modelStreamErrorException",
        "serviceUnavailableException", "internalServerException"]


def test_the_fake_checks_the_gateways_signatures_with_botocore() -> None:
    config = UpstreamConfig(kind="bedrock", base_url="http://127.0.0.1:9", region="us-east-1",
                            aws_access_key_id="AKIDX", aws_secret_access_key="s3cret")
    url = upstream_url(config, "converse", MODEL)
    body = b'{"messages": []}'
    headers = asyncio.run(AwsSigner().headers("aws", config, url, body,
                                              {"content-type": "application/json"}))
    lowered = {k.lower(): v for k, v in headers.items()}
    path = url.removeprefix("http://127.0.0.1:9")
    now = time.time()

    def check(secrets: dict[str, str], sent: bytes = body, at: float = now) -> Any:
        return verify_sigv4("POST", path, "", lowered, sent, secrets, at)

    assert check({"AKIDX": "s3cret"}) == ("AKIDX", None)
    assert check({"AKIDX": "other"})[1][0] == "InvalidSignatureException"
    assert check({"AKIDX": "s3cret"}, b'{"messages": [1]}')[1][0] == \
        "InvalidSignatureException"
    assert check({"AKIDX": "s3cret"}, at=now + 3600)[1][1] == "Signature expired"
    assert check({})[1][0] == "UnrecognizedClientException"


def test_signatures_equal_plain_botocores_for_every_path_and_body() -> None:
    """The signer's shortcuts (the body read as given; canonical paths, signing keys and
    selected headers remembered) change no signature: each is checked by plain botocore, a
    path's second signature (from the remembered path) too, and with a session token."""
    config = UpstreamConfig(kind="bedrock", base_url="http://127.0.0.1:9", region="eu-west-1",
                            aws_access_key_id="AKIDX", aws_secret_access_key="s3cret",
                            aws_session_token="tok/en+=")
    signer = AwsSigner()
    models = [MODEL, "us.anthropic.claude-3-5-haiku-20241022-v1:0",
              "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.model~x:0"]
    bodies = [b"", b'{"messages": []}', "{\"text\": \"d\u00e9j\u00e0 vu \u2603\"}".encode(),
              bytes(range(256))]
    for model in models:
        for api, stream in (("converse", False), ("converse", True), ("messages", False)):
            url = upstream_url(config, api, model, stream)
            path = url.removeprefix("http://127.0.0.1:9")
            for body in bodies:
                headers = asyncio.run(signer.headers("aws", config, url, body, {}))
                lowered = {k.lower(): v for k, v in headers.items()}
                assert lowered["x-amz-security-token"] == "tok/en+="
                assert verify_sigv4("POST", path, "", lowered, body, {"AKIDX": "s3cret"},
                                    time.time()) == ("AKIDX", None), (url, body)


def test_the_remembered_signing_key_follows_the_day_the_region_and_the_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The signer keeps the day's signing key: across midnight, and for another secret or
    region on the same signer, each signature is still the one plain botocore checks."""
    import botocore.auth

    signer = AwsSigner()
    days = [datetime(2026, 12, 3, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 12, 4, 0, 0, 1, tzinfo=UTC)]
    body = b'{"messages": []}'
    for secret, region in (("s3cret", "eu-west-1"), ("0ther", "eu-west-1"),
                           ("s3cret", "us-east-1")):
        config = UpstreamConfig(kind="bedrock", base_url="http://127.0.0.1:9", region=region,
                                aws_access_key_id="AKIDX", aws_secret_access_key=secret)
        url = upstream_url(config, "converse", MODEL, False)
        for day in (*days, *days):
            monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda day=day: day)
            headers = asyncio.run(signer.headers("aws", config, url, body, {}))
            lowered = {k.lower(): v for k, v in headers.items()}
            assert lowered["x-amz-date"] == day.strftime("%Y%m%dT%H%M%SZ")
            assert verify_sigv4("POST", url.removeprefix("http://127.0.0.1:9"), "", lowered,
                                body, {"AKIDX": secret}, day.timestamp()) == ("AKIDX", None)


# --- anything a client sends --------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=12)
BLOCK_KEYS = st.sampled_from(["text", "image", "document", "video", "toolUse", "toolResult",
                              "reasoningContent", "cachePoint", "guardContent", "json", "?"])
blocks = st.dictionaries(BLOCK_KEYS, values | st.fixed_dictionaries({}, optional={
    "format": st.sampled_from(["png", "pdf", "txt", "docx", "x"]) | values,
    "source": st.fixed_dictionaries({}, optional={"bytes": st.text(max_size=20) | values,
                                                  "text": values, "content": values,
                                                  "s3Location": values}),
    "name": values, "input": values, "content": values, "toolUseId": values,
    "reasoningText": values, "text": values, "ttl": values}), max_size=2)
converse_bodies = st.fixed_dictionaries({}, optional={
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(
        ["user", "assistant", "system", ""]) | values}, optional={
        "content": st.lists(blocks, max_size=3) | values}), max_size=3) | values,
    "system": st.lists(blocks, max_size=2) | values,
    "inferenceConfig": st.fixed_dictionaries({}, optional={
        "maxTokens": st.integers(-3, 2**40) | values}) | values,
    "toolConfig": values | st.fixed_dictionaries({"tools": st.lists(values, max_size=2)}),
    "serviceTier": values, "anthropic_version": st.sampled_from(["bedrock-2023-05-31"])
    | values, "max_tokens": st.integers(-3, 100) | values})


@settings(max_examples=100, deadline=None, derandomize=True)
@given(body=converse_bodies, api=st.sampled_from(["converse", "messages"]))
def test_bedrock_parsing_takes_anything(body: dict[str, Any], api: Any) -> None:
    body = json.loads(json.dumps({**body, "model": MODEL, "stream": True}))
    try:
        req = ADAPTER.parse(api, body)
    except GatewayError as exc:
        assert 400 <= exc.status < 500 and exc.message.startswith("tokenstile: ")
        return
    assert ADAPTER.count_input(req) >= 0
    json.dumps(ADAPTER.upstream_body(req))
    price_terms(req)
    observer = ADAPTER.observer(req)
    observer.on_event(eventstream.event("contentBlockDelta", {"delta": {"text": "x"}}))
    assert isinstance(observer.output_text(), str) and observer.usage in (None, Usage())


@settings(max_examples=40, deadline=None, derandomize=True)
@given(body=fuzz.near_valid | fuzz.bodies)
def test_chat_to_converse_takes_anything(body: dict[str, Any]) -> None:
    body = fuzz.as_received(body)
    try:
        bridge = ChatOverConverse(body, 1024)
    except GatewayError as exc:
        fuzz.client_error(exc)
        return
    assert bridge.count_input() >= 0
    chat = CanonicalRequest(api="chat", wire="openai", model=bridge.model, body=body)
    json.dumps(bridge.upstream_body(chat))
