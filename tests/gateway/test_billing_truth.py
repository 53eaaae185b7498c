"""The ledger bills what the provider bills: audio, 1-hour cache writes, service tiers,
search fees and the serving provider's own prices, through the official SDKs end to end,
streamed and not; and reservations that hold the premium a request may pay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from click.testing import CliRunner

from tests import billing_reference as ref
from tests.conftest import FakeHandle, Gateway
from tokenstile.cli import main as cli
from tokenstile.prices import Pricer
from tokenstile.providers.anthropic import AnthropicAdapter
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.testing.fake_upstream import FakeRecord
from tokenstile.types import NANO_PER_USD

ANTHROPIC_KEY = "sk-ant-upstream-secret-0123456789"


def with_claude(fake: FakeHandle, **extra: Any) -> dict[str, Any]:
    return {"upstreams": {"anthropic": {"kind": "anthropic", "base_url": fake.url,
                                        "api_key": ANTHROPIC_KEY}}, **extra}


def gpt(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def claude(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def last(fake: FakeHandle) -> FakeRecord:
    record = fake.fake.tally.last
    assert record is not None
    return record


def only_row(gateway: Gateway) -> Any:
    [row] = gateway.rows()
    assert not row.estimated and row.outcome == "ok"
    return row


def chat_usage_seen(model: str, gateway: Gateway, key: str, stream: bool,
                    **params: Any) -> tuple[dict[str, Any], str | None]:
    """Call chat completions; the usage block and tier the client received."""
    if not stream:
        raw = gpt(gateway, key).chat.completions.with_raw_response.create(
            model=model, **params)
        body = orjson.loads(raw.http_response.content)
        return body["usage"], body.get("service_tier")
    chunks = list(gpt(gateway, key).chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True}, **params))
    assert chunks[-1].usage is not None
    return chunks[-1].usage.model_dump(), chunks[-1].service_tier


# --- audio -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_audio_tokens_are_billed_at_audio_prices(
        gateway: Gateway, fake: FakeHandle, stream: bool) -> None:
    key = gateway.key()
    usage, tier = chat_usage_seen(
        "gpt-audio", gateway, key, stream, max_tokens=20,
        messages=[{"role": "user", "content": "Speak. [[fake:input_audio_tokens=8000,"
                                              "output_audio_tokens=5000]]"}])
    assert usage["prompt_tokens_details"]["audio_tokens"] == 8_000
    assert usage["completion_tokens_details"]["audio_tokens"] == 5_000
    row = only_row(gateway)
    assert row.cost_nano == ref.openai_bill("gpt-audio", usage, served_tier=tier)
    record = last(fake)
    assert (row.input_audio_tokens, row.output_audio_tokens) == (8_000, 5_000)
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens, record.output_tokens)
    # Priced as text it would be a fraction of the bill.
    as_text = ref.openai_bill("gpt-audio", {"prompt_tokens": usage["prompt_tokens"],
                                            "completion_tokens": usage["completion_tokens"]})
    assert row.cost_nano > 5 * as_text


def test_cached_audio_of_a_realtime_model(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    usage, tier = chat_usage_seen(
        "gpt-realtime", gateway, key, False, max_tokens=10,
        messages=[{"role": "user", "content": "[[fake:input_audio_tokens=3000,"
                                              "cached_tokens=2500,cached_audio_tokens=2000]]"}])
    row = only_row(gateway)
    assert row.cost_nano == ref.openai_bill("gpt-realtime", usage, served_tier=tier)
    assert row.detail["cached_audio_tokens"] == 2_000


# --- Anthropic: 1-hour cache writes, web searches, the tier -----------------------------------

CLAUDE_DIRECTIVES = ("[[fake:cache_write_tokens=3000,cache_write_1h_tokens=2000,"
                     "cached_tokens=500,web_searches=3,web_fetches=1,service_tier=priority]]")


@pytest.mark.parametrize("stream", [False, True])
def test_claude_one_hour_writes_searches_and_tier(
        make_gateway: Any, fake: FakeHandle, stream: bool) -> None:
    gateway = make_gateway(with_claude(fake))
    key = gateway.key()
    params: dict[str, Any] = {
        "model": "claude-sonnet-4-5", "max_tokens": 12,
        "messages": [{"role": "user", "content": f"Search. {CLAUDE_DIRECTIVES}"}]}
    if stream:
        with claude(gateway, key).messages.stream(**params) as events:
            message = events.get_final_message()
    else:
        message = claude(gateway, key).messages.create(**params)
    usage = message.usage.model_dump()
    assert usage["cache_creation"]["ephemeral_1h_input_tokens"] == 2_000
    assert usage["server_tool_use"]["web_search_requests"] == 3
    row = only_row(gateway)
    assert row.cost_nano == ref.anthropic_bill("claude-sonnet-4-5", usage)
    assert (row.cache_write_tokens, row.cache_write_1h_tokens, row.cached_input_tokens) == (
        3_000, 2_000, 500)
    assert (row.web_search_requests, row.service_tier) == (3, "priority")
    assert row.detail["web_fetch_requests"] == 1
    # Anthropic's priority tier is priced by contract: standard prices, and said so.
    assert "tier_priced_as_standard:priority" in row.flags


@pytest.mark.parametrize("stream", [False, True])
def test_chat_served_by_claude_is_billed_as_claude_bills(
        make_gateway: Any, fake: FakeHandle, stream: bool) -> None:
    gateway = make_gateway(with_claude(fake))
    key = gateway.key()
    chat_usage_seen("claude-haiku-4-5", gateway, key, stream, max_tokens=12, messages=[
        {"role": "user", "content": f"Search. {CLAUDE_DIRECTIVES}"}])
    record = last(fake)
    assert record.route == "/v1/messages"
    row = only_row(gateway)
    assert row.cost_nano == ref.anthropic_bill("claude-haiku-4-5", {
        "input_tokens": record.input_tokens - record.cached_tokens - record.cache_write_tokens,
        "cache_read_input_tokens": record.cached_tokens,
        "cache_creation_input_tokens": record.cache_write_tokens,
        "cache_creation": {"ephemeral_1h_input_tokens": record.cache_write_1h_tokens},
        "output_tokens": record.output_tokens,
        "server_tool_use": {"web_search_requests": record.web_searches}})
    assert (row.cache_write_1h_tokens, row.web_search_requests) == (2_000, 3)


# --- OpenAI service tiers ---------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "served"), [
    ("flex", "flex"), ("priority", "priority"), ("default", "default"),
    (None, "priority"),  # left to the project, which serves priority
    ("priority", "default"),  # asked for priority, downgraded to default
])
@pytest.mark.parametrize("stream", [False, True])
def test_openai_calls_are_billed_at_the_tier_that_served_them(
        gateway: Gateway, fake: FakeHandle, asked: str | None, served: str,
        stream: bool) -> None:
    key = gateway.key()
    directive = "" if asked == served else f" [[fake:service_tier={served}]]"
    extra = {} if asked is None else {"service_tier": asked}
    usage, tier = chat_usage_seen(
        "gpt-5", gateway, key, stream, max_completion_tokens=40, **extra,
        messages=[{"role": "user", "content": f"Think hard.{directive} [[fake:cached_tokens=4,"
                                              "reasoning_tokens=30]]"}])
    assert tier == served
    row = only_row(gateway)
    assert row.cost_nano == ref.openai_bill("gpt-5", usage, served_tier=served)
    assert row.service_tier == served
    standard = ref.openai_bill("gpt-5", usage)
    ratio = {"flex": 0.5, "priority": 2.0, "default": 1.0}[served]
    assert row.cost_nano == pytest.approx(standard * ratio, rel=0.01)


# --- search fees ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_responses_search_calls_are_billed(
        gateway: Gateway, fake: FakeHandle, stream: bool) -> None:
    key = gateway.key()
    params: dict[str, Any] = {
        "model": "gpt-4o-mini", "max_output_tokens": 16,
        "tools": [{"type": "web_search"},
                  {"type": "file_search", "vector_store_ids": ["vs_1"]}],
        "input": "Find it. [[fake:web_searches=2,file_searches=3]]"}
    if stream:
        events = list(gpt(gateway, key).responses.create(stream=True, **params))
        response = events[-1].response  # type: ignore[union-attr]
    else:
        response = gpt(gateway, key).responses.create(**params)
    kinds = [item.type for item in response.output]
    assert kinds.count("web_search_call") == 2 and kinds.count("file_search_call") == 3
    assert response.usage is not None
    row = only_row(gateway)
    assert row.cost_nano == ref.openai_bill(
        "gpt-4o-mini", response.usage.model_dump(), served_tier=response.service_tier,
        web_searches=2, file_searches=3)
    assert (row.web_search_requests, row.file_search_calls) == (2, 3)


def test_chat_search_models_bill_a_search_per_call(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    usage, tier = chat_usage_seen("gpt-4o-mini-search-preview", gateway, key, False,
                                  web_search_options={}, messages=[
                                      {"role": "user", "content": "News today?"}])
    row = only_row(gateway)
    assert row.cost_nano == ref.openai_bill("gpt-4o-mini", usage, served_tier=tier,
                                            web_searches=1)
    assert row.web_search_requests == 1


# --- the serving provider's prices ------------------------------------------------------------


@pytest.mark.parametrize("how", ["provider", "route"])
def test_a_model_is_billed_at_the_prices_of_the_provider_serving_it(
        make_gateway: Any, fake: FakeHandle, how: str) -> None:
    cerebras: dict[str, Any] = {"kind": "openai", "base_url": fake.v1, "api_key": "sk-c",
                                "provider": "cerebras"}
    gateway = make_gateway({"upstreams": {"cerebras": cerebras},
                            "routes": [{"match": "gpt-oss-120b" if how == "provider"
                                        else "oss", "upstream": "cerebras",
                                        "model": "gpt-oss-120b"}]})
    key = gateway.key()
    usage, _ = chat_usage_seen("gpt-oss-120b" if how == "provider" else "oss", gateway, key,
                               False, max_tokens=30, messages=[
                                   {"role": "user", "content": "[[fake:input_tokens=50000]]"}])
    row = only_row(gateway)
    assert row.cost_nano == ref.openai_bill("gpt-oss-120b", usage, prices=ref.CEREBRAS)
    assert row.upstream == "cerebras"


# --- reservations -----------------------------------------------------------------------------


def usd_limit(nano: int) -> dict[str, Any]:
    return {"limits": [{"scope": "project", "window": "day", "unit": "usd",
                        "amount": nano / NANO_PER_USD}]}


def test_a_one_hour_cache_write_is_reserved_before_it_can_pass_a_budget(
        make_gateway: Any, fake: FakeHandle) -> None:
    words = "weather report for the coastal towns " * 250
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5", "max_tokens": 10,
        "system": [{"type": "text", "text": words,
                    "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "Summarize. [[fake:cache_write_tokens=2000,"
                                                 "cache_write_1h_tokens=2000]]"}]}
    adapter = AnthropicAdapter()
    counted = adapter.count_input(adapter.parse("messages", body))
    pricer = Pricer()
    plain = pricer.estimate_nano("claude-sonnet-4-5", counted, 10, "anthropic")
    assert plain is not None
    # Written for an hour, every input token costs twice the input price.
    written = counted * 6 * 1_000 + 10 * 15 * 1_000
    assert written > 1.9 * plain
    gateway = make_gateway(with_claude(fake, **usd_limit((plain + written) // 2)))
    key = gateway.key()
    with pytest.raises(anthropic.RateLimitError):
        claude(gateway, key).messages.create(**body)
    assert fake.fake.tally.requests == 0
    # The same request without caching fits.
    uncached = {**body, "system": words}
    claude(gateway, key).messages.create(**uncached)
    assert fake.fake.tally.requests == 1


@pytest.mark.parametrize(("asked", "auto_tier", "admitted"), [
    (None, None, False), ("auto", None, False), ("priority", None, False),
    ("default", None, True), (None, "default", True), ("auto", "default", True),
])
def test_a_tier_left_open_is_reserved_at_the_priciest_tier(
        make_gateway: Any, fake: FakeHandle, asked: str | None, auto_tier: str | None,
        admitted: bool) -> None:
    messages = [{"role": "user", "content": "Tell me about the sea " * 100}]
    adapter = OpenAIAdapter()
    counted = adapter.count_input(adapter.parse("chat", {"model": "gpt-4o-mini",
                                                         "messages": messages}))
    standard = counted * 150 + 1_000 * 600  # 0.15 / 0.60 per million
    priority = counted * 250 + 1_000 * 1_000  # 0.25 / 1.00 per million
    upstream: dict[str, Any] = {"kind": "openai", "base_url": fake.v1, "api_key": "sk-u"}
    if auto_tier:
        upstream["auto_service_tier"] = auto_tier
    gateway = make_gateway({"upstreams": {"openai": upstream},
                            **usd_limit((standard + priority) // 2)})
    key = gateway.key()
    extra = {} if asked is None else {"service_tier": asked}
    call = gpt(gateway, key).chat.completions.create
    if admitted:
        call(model="gpt-4o-mini", messages=messages, max_tokens=1_000, **extra)
        assert fake.fake.tally.requests == 1
    else:
        with pytest.raises(openai.RateLimitError):
            call(model="gpt-4o-mini", messages=messages, max_tokens=1_000, **extra)
        assert fake.fake.tally.requests == 0


def test_audio_output_is_reserved_at_the_audio_price(
        make_gateway: Any, fake: FakeHandle) -> None:
    messages = [{"role": "user", "content": "Read this aloud."}]
    gateway = make_gateway(usd_limit(1_000 * 64 * 1_000 - 1))  # under 1,000 audio tokens
    key = gateway.key()
    call = gpt(gateway, key).chat.completions.create
    with pytest.raises(openai.RateLimitError):
        call(model="gpt-audio", messages=messages, max_tokens=1_000, service_tier="default",
             modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
    call(model="gpt-audio", messages=messages, max_tokens=1_000, service_tier="default")
    assert fake.fake.tally.requests == 1


# --- tokenstile check -------------------------------------------------------------------------


def test_check_lists_routed_models_without_a_price(tmp_path: Path) -> None:
    config = tmp_path / "tokenstile.yaml"
    config.write_text("""
upstreams:
  openai: {kind: openai, base_url: "https://api.openai.com/v1"}
  cerebras: {kind: openai, base_url: "https://api.cerebras.ai/v1"}
  local: {kind: openai, base_url: "http://127.0.0.1:8000/v1"}
  anthropic: {kind: anthropic, base_url: "https://api.anthropic.com"}
routes:
  - {match: gpt-oss-120b, upstream: cerebras}
  - {match: gpt-4o, upstream: anthropic}
  - {match: "llama*", upstream: local}
  - {match: mine, upstream: local, model: my-finetune}
  - {match: priced, upstream: local, model: corp-llm}
  - {match: smart, upstream: anthropic, model: claude-sonnet-4-6}
prices:
  corp-llm: {input: 1, output: 2}
resilience:
  fallbacks: {gpt-4o-mini: [gpt-9-turbo]}
degradation:
  downgrade: {claude-opus-4-1: claude-haiku-9}
""")
    result = CliRunner().invoke(cli, ["check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    unpriced = [line for line in result.output.splitlines() if "unpriced:" in line]
    named = sorted(line.split("the model ")[1].split(" ")[0] for line in unpriced)
    # gpt-4o is served by the anthropic upstream here: Anthropic has no price for it.
    assert named == ["'claude-haiku-9',", "'gpt-4o',", "'gpt-9-turbo',", "'mine'"]
    assert any("provider anthropic" in line and "'gpt-4o'" in line for line in unpriced)
    assert any("give 'my-finetune' a price" in line for line in unpriced)
