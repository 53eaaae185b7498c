"""The official anthropic SDK, sync and async, through the gateway to the fake upstream's
Messages API: answered as Anthropic would answer, counted from Anthropic's usage (cache
reads and writes included), priced, recorded, and refused in Anthropic's error shape."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.conftest import FakeHandle, Gateway
from tokenstile.clock import FakeClock
from tokenstile.limits.status import budget_status
from tokenstile.types import Usage

ANTHROPIC_KEY = "sk-ant-upstream-secret-0123456789"
MODEL = "claude-haiku-4-5"
HELLO: list[Any] = [{"role": "user", "content": "Say hello to the ledger."}]
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}


def anthropic_upstream(fake: FakeHandle) -> dict[str, Any]:
    return {"upstreams": {"anthropic": {"kind": "anthropic", "base_url": fake.url,
                                        "api_key": ANTHROPIC_KEY}}}


@pytest.fixture
def claude(make_gateway: Any, fake: FakeHandle) -> Gateway:
    gateway: Gateway = make_gateway(anthropic_upstream(fake))
    return gateway


def client(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def aclient(gateway: Gateway, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)


def assert_row_matches_fake(row: Any, record: Any) -> None:
    assert row.input_tokens == record.input_tokens
    assert row.output_tokens == record.output_tokens
    assert row.cached_input_tokens == record.cached_tokens
    assert row.cache_write_tokens == record.cache_write_tokens
    assert not row.estimated


async def raw_post(gateway: Gateway, path: str, body: Any, headers: dict[str, str]
                   ) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            gateway.url + path, json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def assert_anthropic_error(payload: Any, kind: str) -> str:
    assert payload["type"] == "error"
    assert set(payload["error"]) == {"type", "message"}
    assert payload["error"]["type"] == kind
    message: str = payload["error"]["message"]
    assert message.startswith("tokenstile: ")
    return message


# --- messages -----------------------------------------------------------------------------


def test_message_is_forwarded_counted_priced_and_recorded(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key(project="production", user="alice")
    reply = client(claude, key).messages.create(
        model=MODEL, max_tokens=7, system="You are terse.", messages=HELLO,
        metadata={"user_id": "end-user-42"},
        extra_headers={"x-tokenstile-feature": "greeting", "anthropic-beta": "test-beta-1"})
    record = fake.fake.tally.last
    assert record is not None and record.route == "/v1/messages"
    assert reply.type == "message" and reply.content[0].type == "text"
    assert reply.usage.output_tokens == record.output_tokens == 7
    assert reply.stop_reason == "max_tokens"
    # the provider key from the config, Anthropic's headers as the SDK sent them, no
    # tokenstile key upstream
    assert record.headers["x-api-key"] == ANTHROPIC_KEY
    assert record.headers["anthropic-version"]
    assert record.headers["anthropic-beta"] == "test-beta-1"
    assert "authorization" not in record.headers and key not in str(record.headers)
    [row] = claude.rows()
    assert_row_matches_fake(row, record)
    assert (row.api, row.upstream, row.requested_model, row.served_model) == (
        "messages", "anthropic", MODEL, MODEL)
    assert (row.project, row.user, row.end_user, row.feature) == (
        "production", "alice", "end-user-42", "greeting")
    assert row.status == 200 and row.outcome == "ok" and not row.streamed
    expected = claude.runtime.pricer.cost_nano(MODEL, Usage(row.input_tokens,
                                                            row.output_tokens))
    assert row.cost_nano == expected and row.cost_nano > 0


def test_old_style_x_api_key_authenticates_too(claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    status, _, payload = asyncio.run(raw_post(
        claude, "/v1/messages", {"model": MODEL, "max_tokens": 3, "messages": HELLO},
        {"x-api-key": key, "anthropic-version": "2023-06-01"}))
    assert status == 200 and payload["type"] == "message"
    record = fake.fake.tally.last
    assert record is not None
    assert record.headers["anthropic-version"] == "2023-06-01"
    assert record.headers["x-api-key"] == ANTHROPIC_KEY


def test_streams_are_relayed_event_by_event_and_billed_from_their_usage(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    api = client(claude, key)
    with api.messages.stream(model=MODEL, max_tokens=6, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 6 and final.usage.output_tokens == 6
    events = list(api.messages.create(model=MODEL, max_tokens=4, messages=HELLO,
                                      stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "message_delta" in kinds and kinds.count("content_block_delta") == 4
    rows = claude.rows()
    for row, record in zip(rows, fake.fake.tally.records, strict=True):
        assert_row_matches_fake(row, record)
    assert [(r.streamed, r.output_tokens) for r in rows] == [(True, 6), (True, 4)]


async def test_async_client_stream_and_not(claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    async with aclient(claude, key) as api:
        reply = await api.messages.create(model="claude-sonnet-4-6", max_tokens=3,
                                          messages=HELLO)
        async with api.messages.stream(model="claude-sonnet-4-6", max_tokens=5,
                                       messages=HELLO) as stream:
            pieces = [text async for text in stream.text_stream]
    assert reply.usage.output_tokens == 3 and len(pieces) == 5
    rows = await asyncio.to_thread(claude.rows)
    for row, record in zip(rows, fake.fake.tally.records, strict=True):
        assert_row_matches_fake(row, record)
    assert [r.output_tokens for r in rows] == [3, 5]


def test_tool_use_round_trip(claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    api = client(claude, key)
    ask: list[Any] = [{"role": "user",
                       "content": "Weather in Paris? [[fake:tool_call=get_weather]]"}]
    first = api.messages.create(model=MODEL, max_tokens=50, messages=ask,
                                tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict)
    with api.messages.stream(model=MODEL, max_tokens=50, messages=ask,
                             tools=[WEATHER_TOOL]) as stream:  # type: ignore[list-item]
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [b.type for b in streamed.content] == ["tool_use"]
    follow_up: list[Any] = [
        *ask,
        {"role": "assistant", "content": [call.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "18 degrees and sunny"}]},
    ]
    answer = api.messages.create(model=MODEL, max_tokens=8, messages=follow_up,
                                 tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert answer.content[0].type == "text" and answer.stop_reason == "max_tokens"
    rows = claude.rows()
    for row, record in zip(rows, fake.fake.tally.records, strict=True):
        assert_row_matches_fake(row, record)
    assert len(rows) == 3 and all(r.cost_nano > 0 for r in rows)


def test_cache_reads_and_writes_are_recorded_and_priced(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    api = client(claude, key)
    messages: list[Any] = [{"role": "user", "content": "x " * 300 +
                            "[[fake:cached_tokens=200,cache_write_tokens=50]]"}]
    reply = api.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=messages)
    # Anthropic's input_tokens leaves out cache reads and writes …
    assert reply.usage.cache_read_input_tokens == 200
    assert reply.usage.cache_creation_input_tokens == 50
    with api.messages.stream(model="claude-sonnet-4-6", max_tokens=5,
                             messages=messages) as stream:
        stream.until_done()
    pricer = claude.runtime.pricer
    for row, record in zip(claude.rows(), fake.fake.tally.records, strict=True):
        # … tokenstile's input includes them, as the fake's tally does
        assert_row_matches_fake(row, record)
        assert row.input_tokens == reply.usage.input_tokens + 250
        assert (row.cached_input_tokens, row.cache_write_tokens) == (200, 50)
        exact = pricer.cost_nano("claude-sonnet-4-6", Usage(
            row.input_tokens, row.output_tokens, cached_input_tokens=200,
            cache_write_tokens=50))
        uncached = pricer.cost_nano("claude-sonnet-4-6",
                                    Usage(row.input_tokens, row.output_tokens))
        assert exact is not None and uncached is not None
        assert row.cost_nano == exact < uncached  # reads are cheap, writes dearer: net less


def test_count_tokens_is_free_and_recorded_at_zero(claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key(project="p")
    counted = client(claude, key).messages.count_tokens(
        model=MODEL, system="You are terse.", messages=HELLO)
    record = fake.fake.tally.last
    assert record is not None and record.route == "/v1/messages/count_tokens"
    assert record.headers["x-api-key"] == ANTHROPIC_KEY
    assert counted.input_tokens > 0
    [row] = claude.rows()
    assert (row.api, row.status, row.cost_nano, row.input_tokens, row.output_tokens) == (
        "count_tokens", 200, 0, 0, 0)
    assert not row.estimated


def test_count_tokens_still_answers_when_the_budget_is_spent(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({**anthropic_upstream(fake),
                            "projects": {"p": {"daily_limit": 40}}})
    key = gateway.key(project="p")
    api = client(gateway, key)
    api.messages.create(model=MODEL, max_tokens=20, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError):
        api.messages.create(model=MODEL, max_tokens=30, messages=HELLO)
    # measuring a prompt to shrink it costs nothing and reserves nothing
    assert api.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens > 0


def test_a_stream_cut_after_message_start_bills_exact_input_and_counted_output(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    with pytest.raises(anthropic.APIError), client(claude, key).messages.stream(
            model=MODEL, max_tokens=50,
            messages=[{"role": "user", "content": "go [[fake:cut_after=4]]"}]) as stream:
        stream.until_done()
    record = fake.fake.tally.last
    assert record is not None and record.cut
    [row] = claude.rows()
    assert row.outcome == "upstream_cut"
    assert row.input_tokens == record.input_tokens  # from message_start
    # message_start said 1 output token; the text relayed before the cut is counted instead
    assert row.output_tokens >= record.output_tokens == 4
    assert row.estimated is False or row.output_tokens > 1
    assert row.cost_nano > 0


# --- errors -------------------------------------------------------------------------------


def test_upstream_errors_reach_the_sdk_as_its_own_exceptions(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    api = client(claude, key)
    with pytest.raises(anthropic.RateLimitError) as limited:
        api.messages.create(model=MODEL, max_tokens=5, messages=[
            {"role": "user", "content": "[[fake:status=429,retry_after=3]]"}])
    assert limited.value.response.headers["retry-after"] == "3"
    assert isinstance(limited.value.body, dict)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.InternalServerError) as failed:
        api.messages.create(model=MODEL, max_tokens=5, messages=[
            {"role": "user", "content": "[[fake:status=500]]"}])
    assert failed.value.status_code == 500
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        api.messages.create(model=MODEL, max_tokens=5, stream=True, messages=[
            {"role": "user", "content": "[[fake:status=529]]"}])
    assert overloaded.value.status_code == 529
    rows = claude.rows()
    assert [(r.status, r.outcome, r.cost_nano) for r in rows] == [
        (429, "upstream_error", 0), (500, "upstream_error", 0), (529, "upstream_error", 0)]


def test_an_error_in_the_stream_reaches_the_sdk(claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    with pytest.raises(anthropic.APIStatusError), client(claude, key).messages.stream(
            model=MODEL, max_tokens=50,
            messages=[{"role": "user", "content": "go [[fake:error_after=3]]"}]) as stream:
        stream.until_done()
    [row] = claude.rows()
    assert row.input_tokens == fake.fake.tally.input_tokens and row.output_tokens >= 3


def test_gateway_refusals_are_anthropic_shaped(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({
        **anthropic_upstream(fake),
        "limits": [{"scope": "project", "window": "request", "unit": "tokens",
                    "amount": 100}],
        "projects": {"tight": {"daily_limit": 30}},
    })
    api = client(gateway, "ts-not-a-real-key")
    with pytest.raises(anthropic.AuthenticationError) as unauthorized:
        api.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert_anthropic_error(unauthorized.value.body, "authentication_error")

    key = gateway.key(project="demo")
    with pytest.raises(anthropic.UnprocessableEntityError) as too_big:
        client(gateway, key).messages.create(model=MODEL, max_tokens=500, messages=HELLO)
    message = assert_anthropic_error(too_big.value.body, "invalid_request_error")
    assert "per request" in message

    tight = gateway.key(project="tight")
    with pytest.raises(anthropic.RateLimitError) as spent:
        client(gateway, tight).messages.create(model=MODEL, max_tokens=50, messages=HELLO)
    message = assert_anthropic_error(spent.value.body, "rate_limit_error")
    assert "project 'tight'" in message
    assert spent.value.response.headers["retry-after"]

    narrow = gateway.key(allowed_models=["claude-sonnet*"])
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        client(gateway, narrow).messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert_anthropic_error(denied.value.body, "permission_error")
    assert fake.fake.tally.requests == 0


@pytest.mark.parametrize(("body", "fragment"), [
    ({"model": MODEL, "messages": HELLO}, "'max_tokens' is required"),
    ({"model": MODEL, "max_tokens": 5}, "'messages' is required"),
    ({"model": MODEL, "max_tokens": 5,
      "messages": [{"role": "system", "content": "x"}]}, "top-level 'system'"),
    ({"model": MODEL, "max_tokens": "five", "messages": HELLO}, "must be an integer"),
])
async def test_malformed_messages_get_anthropic_shaped_400s(
        claude: Gateway, fake: FakeHandle, body: dict[str, Any], fragment: str) -> None:
    key = claude.key()
    status, _, payload = await raw_post(claude, "/v1/messages", body,
                                        {"authorization": f"Bearer {key}"})
    assert status == 400
    assert fragment in assert_anthropic_error(payload, "invalid_request_error")
    assert fake.fake.tally.requests == 0


async def test_unknown_routes_and_methods_under_messages_are_anthropic_shaped(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    headers = {"authorization": f"Bearer {key}"}
    status, _, payload = await raw_post(claude, "/v1/messages/batches", {}, headers)
    assert status == 404
    assert "unknown route" in assert_anthropic_error(payload, "not_found_error")
    async with aiohttp.ClientSession() as session, session.get(
            claude.url + "/v1/messages", headers=headers) as resp:
        assert resp.status == 405 and resp.headers["allow"] == "POST"
        assert_anthropic_error(await resp.json(), "invalid_request_error")


async def test_token_counting_for_a_model_without_an_anthropic_upstream_gets_a_clear_400(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key()
    status, _, payload = await raw_post(
        claude, "/v1/messages/count_tokens", {"model": "gpt-4o-mini", "messages": HELLO},
        {"authorization": f"Bearer {key}"})
    assert status == 400
    message = assert_anthropic_error(payload, "invalid_request_error")
    assert "needs an anthropic upstream" in message and "'openai'" in message
    assert fake.fake.tally.requests == 0
    [row] = await asyncio.to_thread(claude.rows)
    assert (row.status, row.cost_nano) == (400, 0)


def test_unknown_model_without_any_upstream_is_an_anthropic_404(
        make_gateway: Any, fake: FakeHandle, tmp_path: Any) -> None:
    from tokenstile.config import parse_config

    config = parse_config({
        "upstreams": {"claude": {"kind": "anthropic", "base_url": fake.url}},
        "storage": {"counters": "memory://", "database": f"sqlite:///{tmp_path}/only.db"},
    }, "<test>", env={})
    gateway = make_gateway(config)
    key = gateway.key()
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(gateway, key).messages.create(model="llama-3", max_tokens=5, messages=HELLO)
    assert "no upstream serves the model 'llama-3'" in assert_anthropic_error(
        caught.value.body, "not_found_error")
    # claude models go to the only anthropic upstream, whatever its name
    client(gateway, key).messages.create(model=MODEL, max_tokens=2, messages=HELLO)
    assert gateway.rows()[-1].upstream == "claude"


# --- limits and policies see Anthropic bodies ---------------------------------------------


def test_per_request_output_limits_clamp_max_tokens_in_the_messages_body(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({**anthropic_upstream(fake),
                            "limits": [{"name": "short", "scope": "project",
                                        "window": "request", "unit": "output_tokens",
                                        "amount": 5}]})
    key = gateway.key()
    reply = client(gateway, key).messages.create(model=MODEL, max_tokens=400,
                                                 messages=HELLO)
    record = fake.fake.tally.last
    assert record is not None and record.body["max_tokens"] == 5
    assert reply.usage.output_tokens == 5
    [row] = gateway.rows()
    assert "max_tokens_clamped:short" in row.flags


def test_input_estimates_reserve_and_provider_usage_settles(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({**anthropic_upstream(fake),
                            "projects": {"p": {"daily_limit": 10_000}}})
    key = gateway.key(project="p")
    long_text = "The quick brown fox jumps over the lazy dog. " * 40
    client(gateway, key).messages.create(model=MODEL, max_tokens=10, messages=[
        {"role": "user", "content": long_text}])
    adapter = gateway.runtime.adapters["anthropic"]
    req = adapter.parse("messages", {"model": MODEL, "max_tokens": 10, "messages": [
        {"role": "user", "content": long_text}]})
    estimate = adapter.count_input(req)
    record = fake.fake.tally.last
    assert record is not None
    assert estimate != record.input_tokens  # Claude's tokenizer is not public: an estimate
    [row] = gateway.rows()
    assert row.input_tokens == record.input_tokens and not row.estimated
    # the counters were settled to what the provider reported, not to the estimate
    rt = gateway.runtime
    [status] = gateway.run(budget_status(rt.admission.limits, rt.counters, rt.clock.now(),
                                         {"project": ["p"]}))
    assert status.used == row.input_tokens + row.output_tokens


# --- models -------------------------------------------------------------------------------


def test_models_are_listed_in_the_shape_of_the_sdk_that_asks(
        claude: Gateway, fake: FakeHandle) -> None:
    key = claude.key(allowed_models=["claude-*"])
    api = client(claude, key)
    ids = [m.id for m in api.models.list()]
    assert MODEL in ids and all(i.startswith("claude-") for i in ids)
    one = api.models.retrieve(MODEL)
    assert (one.type, one.id) == ("model", MODEL)
    with pytest.raises(anthropic.NotFoundError) as caught:
        api.models.retrieve("gpt-4o")
    assert_anthropic_error(caught.value.body, "not_found_error")
    asked = [r for r in fake.fake.tally.records if r.route == "/v1/models"]
    to_anthropic = [r for r in asked if r.headers.get("x-api-key") == ANTHROPIC_KEY]
    assert to_anthropic and all(r.headers["anthropic-version"] for r in to_anthropic)
    # the openai SDK sees Claude models too: it can call them through translation
    listed = openai.OpenAI(base_url=claude.v1, api_key=key, max_retries=0).models.list()
    assert MODEL in [m.id for m in listed]
    with pytest.raises(anthropic.AuthenticationError) as denied:
        client(claude, "ts-unknown").models.list()
    assert_anthropic_error(denied.value.body, "authentication_error")


def test_an_unreachable_anthropic_upstream_is_an_anthropic_502(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"upstreams": {"anthropic": {
        "kind": "anthropic", "base_url": "http://127.0.0.1:1", "api_key": ANTHROPIC_KEY,
        "connect_timeout_s": 2}}})
    with pytest.raises(anthropic.InternalServerError) as caught:
        client(gateway, gateway.key()).messages.create(model=MODEL, max_tokens=5,
                                                       messages=HELLO)
    assert caught.value.status_code == 502
    message = assert_anthropic_error(caught.value.body, "api_error")
    assert "could not be reached" in message and ANTHROPIC_KEY not in message
    [row] = gateway.rows()
    assert (row.status, row.cost_nano) == (502, 0)


def test_anthropic_ratelimit_headers_come_from_the_budgets(make_gateway: Any,
                                                           fake: FakeHandle) -> None:
    """``anthropic-ratelimit-*`` as Anthropic sends them, set from the tightest budgets of
    each kind as the ``x-ratelimit-*`` ones are; resets are RFC 3339 times."""
    clock = FakeClock(1_767_225_630.0)  # 2026-01-01T00:00:30Z
    gateway = make_gateway({**anthropic_upstream(fake), "limits": [
        {"name": "rpm", "scope": "project", "window": "minute", "unit": "requests",
         "amount": 3},
        {"name": "daily", "scope": "project", "window": "day", "unit": "tokens",
         "amount": 100_000},
        {"name": "in", "scope": "project", "window": "hour", "unit": "input_tokens",
         "amount": 50_000},
        {"name": "out", "scope": "project", "window": "hour", "unit": "output_tokens",
         "amount": 2_000}]}, clock=clock)
    api = client(gateway, gateway.key())
    raw = api.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=HELLO)
    headers = raw.headers
    assert (headers["anthropic-ratelimit-requests-limit"],
            headers["anthropic-ratelimit-requests-remaining"],
            headers["anthropic-ratelimit-requests-reset"]) == ("3", "2", "2026-01-01T00:01:00Z")
    # tokens: the tightest token budget of any kind (here the hourly output one, 5 % used)
    assert headers["anthropic-ratelimit-tokens-limit"] == "2000"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "1900"  # the cap is reserved
    assert headers["anthropic-ratelimit-tokens-reset"] == "2026-01-01T01:00:00Z"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "1900"
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "50000"
    assert 50_000 - 100 < int(headers["anthropic-ratelimit-input-tokens-remaining"]) < 50_000
    assert headers["anthropic-ratelimit-input-tokens-reset"] == "2026-01-01T01:00:00Z"
    # the same budgets as the x-ratelimit-* headers
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-remaining-tokens"] == "1900"
    for _ in range(2):
        api.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as limited:
        api.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    refused = limited.value.response.headers
    assert refused["anthropic-ratelimit-requests-remaining"] == "0"
    assert refused["anthropic-ratelimit-requests-reset"] == "2026-01-01T00:01:00Z"
    assert refused["retry-after"] == "30"
    # OpenAI routes keep OpenAI's headers only
    chat = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(project="other"),
                         max_retries=0)
    plain = chat.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert "x-ratelimit-limit-requests" in plain.headers
    assert not [name for name in plain.headers if name.startswith("anthropic-ratelimit")]
