"""Gemini's wire format as plain values: requests checked and counted, hidden input, the
output worst case with thinking and the caps written into ``generationConfig``, usage from
``usageMetadata``, lazy reading of relayed streams (and what a cut one bills), Google's
error shape, URLs and headers, routing and config, policies on Gemini chunks, and the
chat completions bridge."""

from __future__ import annotations

import copy
import re
from typing import Any

import orjson
import pytest

from tokenstile import tokens
from tokenstile.config import UpstreamConfig, parse_config
from tokenstile.errors import GatewayError, google_status, render_error
from tokenstile.gateway.asgi import sse_error
from tokenstile.gateway.counted import ReasoningPace
from tokenstile.gateway.routing import Router
from tokenstile.gateway.upstream import upstream_headers, upstream_url
from tokenstile.limits.caps import cap_value, output_cap_field, set_output_cap
from tokenstile.policies.scanner import Finder, Hit, WordFinder
from tokenstile.policies.stream import PolicyStreamObserver
from tokenstile.policies.texts import request_slots, response_slots, tool_slots
from tokenstile.policies.wordlists import WordMatcher
from tokenstile.prices import upstream_provider
from tokenstile.providers.gemini import GeminiAdapter, GeminiStreamObserver, forwarded_body
from tokenstile.providers.gemini_translate import (
    GeminiChatTranslator,
    chat_to_gemini,
    gemini_error_to_openai,
    gemini_to_chat,
)
from tokenstile.providers.generate_content import (
    count_gemini,
    hidden_gemini,
    output_worst_case,
    usage_of_answer,
    usage_of_metadata,
)
from tokenstile.providers.terms import price_terms
from tokenstile.testing._fake_core import NORMAL, plan_reply
from tokenstile.testing._fake_gemini import generate_body, generate_stream
from tokenstile.testing._fake_wire import Turn
from tokenstile.types import Usage

FLASH = "gemini-2.5-flash"
ADAPTER = GeminiAdapter()


def request(model: str = FLASH, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "stream": False, "contents": [
        {"role": "user", "parts": [{"text": "Hello there"}]}]}
    body.update(fields)
    return body


def bad(body: dict[str, Any], api: Any = "generate_content") -> str:
    with pytest.raises(GatewayError) as refused:
        ADAPTER.parse(api, body)
    assert refused.value.status == 400
    return refused.value.message


# --- requests -----------------------------------------------------------------------------


def test_wrong_shapes_are_refused_with_the_field_named() -> None:
    assert "'contents' is required" in bad({"model": FLASH})
    assert "non-empty array" in bad(request(contents=[]))
    assert "'contents[0].role' must be 'user' or 'model'" in bad(request(contents=[
        {"role": "system", "parts": [{"text": "x"}]}]))
    assert "'contents[0].parts[0].text' must be a string" in bad(request(contents=[
        {"role": "user", "parts": [{"text": 5}]}]))
    assert "generationConfig.maxOutputTokens" in bad(request(
        generationConfig={"maxOutputTokens": "10"}))
    assert "thinkingBudget" in bad(request(generationConfig={
        "thinkingConfig": {"thinking_budget": -2}}))
    assert "'generationConfig' must be an object" in bad(request(generationConfig=[]))
    assert "'cachedContent'" in bad(request(cachedContent=3))
    assert "'tools'" in bad(request(tools={"functionDeclarations": []}))


def test_a_request_reads_its_text_cap_and_hidden_input() -> None:
    body = request(systemInstruction={"parts": [{"text": "Be terse."}]}, contents=[
        {"role": "user", "parts": [{"text": "Look"}, {"inlineData": {
            "mimeType": "image/png", "data": "AAAA"}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"q": "x"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f",
                                                         "response": {"a": 1}}}]}],
        generationConfig={"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 50}},
        cachedContent="cachedContents/1")
    req = ADAPTER.parse("generate_content", body)
    assert (req.api, req.wire, req.model, req.stream) == ("generate_content", "gemini", FLASH,
                                                          False)
    assert req.input_text.startswith("Look\nf\n") and req.system_text == "Be terse."
    assert req.output_cap == 150 and req.output_cap_field == "generationConfig.maxOutputTokens"
    assert req.hidden_input == ("cached_content", "inline_data")
    assert forwarded_body(body).keys() == body.keys() - {"model", "stream"}
    snake = request(contents=[{"parts": [{"file_data": {"file_uri": "x"}}]}],
                    cached_content="c")
    assert hidden_gemini(snake) == ("cached_content", "file_data")


def test_count_tokens_wraps_a_generate_request_and_reserves_nothing() -> None:
    body = {"model": FLASH, "stream": False, "generateContentRequest": {
        "model": f"models/{FLASH}", "contents": [{"parts": [{"text": "count me"}]}]}}
    req = ADAPTER.parse("count_tokens", body)
    assert req.api == "count_tokens" and req.output_cap is None and req.input_text == "count me"
    assert ADAPTER.usage_from_body("count_tokens", {"totalTokens": 9}) == Usage()


def test_the_input_estimate_stays_above_the_o200k_count() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 40
    body = request(contents=[{"role": "user", "parts": [{"text": text}]}],
                   tools=[{"functionDeclarations": [{"name": "look", "parameters": {
                       "type": "object"}}]}])
    assert count_gemini(FLASH, body) > tokens.count_text(FLASH, text) * 1.15


@pytest.mark.parametrize(("model", "config", "worst"), [
    (FLASH, {"maxOutputTokens": 100}, 100 + 24_576),  # thinking left to the model
    (FLASH, {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 0}}, 100),
    (FLASH, {"maxOutputTokens": 100, "thinkingConfig": {"thinking_budget": 300}}, 400),
    ("gemini-2.5-pro", {"maxOutputTokens": 10, "thinkingConfig": {"thinkingBudget": -1}},
     10 + 32_768),
    ("gemini-2.0-flash", {}, 8_192),  # no cap: the model's most
    (FLASH, {"maxOutputTokens": 10, "candidateCount": 3}, 3 * (10 + 24_576)),
    ("my-tuned-model", {}, None),
])
def test_the_output_worst_case(model: str, config: dict[str, Any], worst: int | None) -> None:
    assert output_worst_case(model, {"generationConfig": config}) == worst


def test_caps_are_written_into_generation_config_and_bound_thinking() -> None:
    sent = request(generationConfig={"temperature": 0.1, "max_output_tokens": 9000,
                                     "thinking_config": {"thinking_level": "high"}})
    before = copy.deepcopy(sent)
    req = ADAPTER.parse("generate_content", sent)
    assert output_cap_field(req) == "generationConfig.maxOutputTokens"
    set_output_cap(req, 1000)
    # Each field as the client spelled it, its other spelling gone.
    assert req.body["generationConfig"] == {"temperature": 0.1, "max_output_tokens": 500,
                                            "thinking_config": {"thinking_budget": 500}}
    assert req.output_cap_field == "generationConfig.max_output_tokens"
    assert req.output_cap == 1000 and cap_value(req.body, req.output_cap_field) == 500
    assert sent == before  # the client's body is untouched
    lite = ADAPTER.parse("generate_content", request("gemini-2.0-flash", generationConfig={
        "maxOutputTokens": 9000, "candidateCount": 2}))
    set_output_cap(lite, 1000)
    assert lite.body["generationConfig"] == {"maxOutputTokens": 500, "candidateCount": 2}
    assert lite.output_cap == 1000


def test_price_terms_ask_for_audio_and_search_prices() -> None:
    audio = ADAPTER.parse("generate_content", request(contents=[{"parts": [
        {"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}}]}],
        tools=[{"google_search": {}}]))
    terms = price_terms(audio)
    assert terms.audio_input and terms.web_searches == 1
    plain = price_terms(ADAPTER.parse("generate_content", request()))
    assert not plain.audio_input and plain.web_searches == 0


# --- usage --------------------------------------------------------------------------------


def test_usage_metadata_in_tokenstiles_convention() -> None:
    usage = usage_of_metadata({
        "promptTokenCount": 1000, "cachedContentTokenCount": 600,
        "candidatesTokenCount": 50, "thoughtsTokenCount": 200,
        "toolUsePromptTokenCount": 30, "totalTokenCount": 1280,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 900},
                                {"modality": "AUDIO", "tokenCount": 100}],
        "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 40}]})
    assert usage == Usage(input_tokens=1030, output_tokens=250, cached_input_tokens=600,
                          reasoning_tokens=200, input_audio_tokens=100,
                          cached_audio_tokens=40)
    assert usage.total_tokens == 1280
    grounded = usage_of_answer({"candidates": [{"groundingMetadata": {
        "webSearchQueries": ["q"]}}], "usageMetadata": {"promptTokenCount": 5}})
    assert grounded is not None and grounded.web_search_requests == 1
    assert usage_of_answer({"candidates": []}) is None


def turn(output_tokens: int = 6, reasoning: int = 0, text: bool = False) -> Turn:
    directives = NORMAL
    if reasoning:
        from tokenstile.testing._fake_core import Directives
        directives = Directives.merged({"reasoning_tokens": reasoning,
                                        "reasoning_text": text})
    reply = plan_reply(directives, max_tokens=None, default_output_tokens=output_tokens,
                       tools=None)
    return Turn(id="r1", item_id="", call_id="", model=FLASH, created=0, input_tokens=40,
                cached_tokens=0, cache_write_tokens=0, reply=reply, request={})


def events(t: Turn) -> list[bytes]:
    parts = generate_stream(t, 0)
    return [*parts.pieces, parts.tail]


def test_a_stream_is_read_lazily_for_its_final_usage() -> None:
    chunks = events(turn(6, reasoning=7))
    observer = GeminiStreamObserver(FLASH)
    assert [observer.on_event(e) for e in chunks] == chunks  # relayed unchanged
    assert observer.usage == Usage(input_tokens=40, output_tokens=13, reasoning_tokens=7)
    assert observer.usage_is_final()
    assert observer._read == 0  # the usage came from the tail alone
    assert observer.output_text() == "alpha beta gamma delta epsilon theta"


def test_a_cut_stream_bills_the_reported_input_and_the_text_seen() -> None:
    chunks = events(turn(6, reasoning=5, text=True))
    observer = GeminiStreamObserver(FLASH)
    for event in chunks[:7]:  # the thoughts, then two answer tokens
        observer.on_event(event)
    assert not observer.usage_is_final()
    assert observer.usage == Usage(input_tokens=40, output_tokens=7, reasoning_tokens=5)
    assert observer.reasoning_text().split() == ["alpha", "beta", "gamma", "delta", "epsilon"]
    untold = GeminiStreamObserver(FLASH)
    untold.on_event(b'data: {"candidates": [{"content": {"parts": [{"text": "hi"}]}}]}\r\n\r\n')
    assert untold.usage is None and untold.answering()


def test_thinking_streams_billed_by_pace_unless_thinking_is_off() -> None:
    pace = ReasoningPace(parse_config({}, "<t>", env={}).hidden_reasoning)
    assert pace.of(FLASH, {}) > 0
    off = {"generationConfig": {"thinkingConfig": {"thinking_budget": 0}}}
    assert pace.of(FLASH, off) == 0
    assert pace.of("gemini-2.0-flash", {}) == 0


# --- errors, URLs, routing ----------------------------------------------------------------


@pytest.mark.parametrize(("status", "name"), [
    (400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED"),
    (404, "NOT_FOUND"), (413, "INVALID_ARGUMENT"), (429, "RESOURCE_EXHAUSTED"),
    (500, "INTERNAL"), (502, "UNAVAILABLE"), (503, "UNAVAILABLE"),
    (504, "DEADLINE_EXCEEDED")])
def test_errors_in_googles_shape(status: int, name: str) -> None:
    body = orjson.loads(render_error("gemini", status, "tokenstile: no", code="why"))
    assert body == {"error": {"code": status, "message": "tokenstile: no", "status": name,
                              "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                           "reason": "why", "domain": "tokenstile"}]}}
    assert google_status(status) == name
    event = sse_error("gemini", GatewayError(status, "cut"))
    assert event.startswith(b'data: {"error":') and event.endswith(b"\r\n\r\n")


def test_urls_and_headers_of_a_gemini_upstream() -> None:
    config = UpstreamConfig(kind="gemini", api_key="AIza-secret")
    assert config.base_url == "https://generativelanguage.googleapis.com"
    assert upstream_url(config, "generate_content", FLASH) == \
        f"{config.base_url}/v1beta/models/{FLASH}:generateContent"
    assert upstream_url(config, "generate_content", f"models/{FLASH}", True) == \
        f"{config.base_url}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"
    v1 = UpstreamConfig(kind="gemini", base_url="https://proxy.example/v1")
    assert upstream_url(v1, "count_tokens", FLASH) == \
        f"https://proxy.example/v1/models/{FLASH}:countTokens"
    client = {"x-goog-api-key": "ts-caller", "authorization": "Bearer ts-caller",
              "cookie": "c", "x-goog-api-client": "genai-sdk"}
    assert upstream_headers(config, client, None) == {"content-type": "application/json",
                                                      "x-goog-api-key": "AIza-secret"}
    assert upstream_provider("gemini", "http://127.0.0.1:9") == "google"


def test_gemini_models_route_to_the_gemini_upstream() -> None:
    config = parse_config({"upstreams": {
        "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1"},
        "google": {"kind": "gemini"}}}, "<t>", env={})
    router = Router(config)
    assert router.resolve(FLASH).upstream == "google"
    assert router.resolve(FLASH).wire == "gemini" and router.resolve(FLASH).provider == "google"
    assert router.resolve("gpt-4o").upstream == "openai"
    alone = Router(parse_config({"upstreams": {"google": {"kind": "gemini"}}}, "<t>", env={}))
    assert alone.resolve("learnlm-2.0").upstream == "google"


# --- policies -----------------------------------------------------------------------------


def finders(**entries: str) -> list[Finder]:
    hits = {word: Hit("response_wordlists", "t", action) for word, action in entries.items()}
    return [WordFinder(WordMatcher(hits))]


def test_policy_slots_of_gemini_bodies() -> None:
    body = request(contents=[{"role": "user", "parts": [{"text": "a"}, {"inlineData": {}}]},
                             {"role": "model", "parts": [{"text": "b"}]}])
    assert [owner[key] for owner, key in request_slots("generate_content", body)] == ["a", "b"]
    answer = {"candidates": [{"content": {"parts": [
        {"text": "thinking", "thought": True}, {"text": "shown"},
        {"functionCall": {"name": "f", "args": {"q": "v"}}}]}}]}
    assert [o[k] for _, o, k in response_slots("generate_content", answer)] == ["shown"]
    assert [o[k] for o, k in tool_slots("generate_content", answer)] == [{"q": "v"}]


def test_a_stream_is_redacted_across_chunks_and_function_calls_are_scanned() -> None:
    seen: list[Any] = []
    t = turn(6)
    observer = PolicyStreamObserver(GeminiStreamObserver(FLASH), "generate_content",
                                    finders(gamma="redact", zeta="redact"), seen.extend,
                                    "gemini")
    out = b"".join(r for e in events(t) if (r := observer.on_event(e)) is not None)
    # Rewritten chunks end in a blank line of their own, relayed ones as Google ended them.
    chunks = [orjson.loads(part[6:]) for part in re.split(rb"\r?\n\r?\n", out)
              if part.strip()]
    text = "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"][
        "parts"])
    assert text == "alpha beta **** delta epsilon theta"
    call = b'data: {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", ' \
        b'"args": {"q": ["zeta", 1]}}}]}, "finishReason": "STOP"}]}\r\n\r\n'
    fresh = PolicyStreamObserver(GeminiStreamObserver(FLASH), "generate_content",
                                 finders(zeta="redact"), seen.extend, "gemini")
    relayed = fresh.on_event(call)
    assert relayed is not None
    parsed = orjson.loads(relayed[relayed.index(b"{"):])
    assert parsed["candidates"][0]["content"]["parts"][0]["functionCall"]["args"] == {
        "q": ["****", 1]}


# --- the chat completions bridge ----------------------------------------------------------


def test_chat_to_gemini_and_back() -> None:
    body = chat_to_gemini({"model": FLASH, "max_tokens": 50_000, "top_p": 0.5, "messages": [
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "see"}, {
            "type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 4096)
    assert body["contents"] == [{"role": "user", "parts": [
        {"text": "see"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]
    assert body["systemInstruction"] == {"parts": [{"text": "Be kind."}]}
    assert body["generationConfig"] == {"topP": 0.5, "maxOutputTokens": 50_000 - 24_576}
    with pytest.raises(GatewayError):
        chat_to_gemini({"model": FLASH, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]}]}, 10)
    answer = generate_body(turn(3, reasoning=4), 0)
    chat = gemini_to_chat(answer, FLASH, created=1)
    assert chat["id"] == "chatcmpl-" + answer["responseId"]  # Google's id for the answer
    assert chat["choices"][0]["message"]["content"] == "alpha beta gamma"
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert chat["usage"]["completion_tokens"] == 7
    assert chat["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}
    blocked = gemini_to_chat({"promptFeedback": {"blockReason": "SAFETY"}}, FLASH)
    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", blocked["id"])  # none given: a new one
    error = orjson.loads(gemini_error_to_openai(429, orjson.dumps(
        {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}})))
    assert error["error"]["message"] == "slow down"
    assert error["error"]["type"] == "rate_limit_exceeded"


def test_the_stream_translator_ends_with_usage_and_done() -> None:
    translator = GeminiChatTranslator(FLASH, include_usage=True)
    out = b"".join(r for e in events(turn(3)) if (r := translator.on_event(e)) is not None)
    parts = [p[6:] for p in out.split(b"\n\n") if p.startswith(b"data: ")]
    assert parts[-1] == b"[DONE]"
    assert {orjson.loads(p)["id"] for p in parts[:-1]} == {"chatcmpl-" + turn(3).id}
    usage = orjson.loads(parts[-2])["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (40, 3)
    assert translator.usage_is_final() and translator.output_text() == "alpha beta gamma"
    broken = GeminiChatTranslator(FLASH)
    relayed = broken.on_event(b'data: {"error": {"code": 503, "message": "busy", '
                              b'"status": "UNAVAILABLE"}}\r\n\r\n')
    assert relayed is not None and orjson.loads(relayed[6:])["error"]["message"] == "busy"
