"""Random usage shapes, every billable field present or missing, from OpenAI chat and
Responses and from Anthropic, streamed and not, go through the gateway's own parse → price
→ settle → ledger path, and the ledger must show what the provider bills, as an
independent reference (``tests/billing_reference.py``) computes it from the same usage.

The first property runs the path in process (fast, many examples); the second goes through
the real gateway and the official SDKs against the fake upstream (fewer examples).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import billing_reference as ref
from tests.conftest import FakeHandle, Gateway
from tokenstile.clock import SystemClock
from tokenstile.config import parse_config
from tokenstile.limits.admission import Admission
from tokenstile.prices import Pricer
from tokenstile.providers.anthropic import AnthropicAdapter
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.stores.counters_memory import MemoryCounterStore
from tokenstile.stores.db_sqlite import SqliteDatabase
from tokenstile.types import Caller, LedgerRow, RequestContext, Ticket

OPENAI_MODELS = ["gpt-audio", "gpt-realtime", "gpt-4o-mini", "gpt-5", "o4-mini"]
ANTHROPIC_MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-5"]
OPENAI_TIERS = [None, "default", "flex", "priority", "scale"]
ANTHROPIC_TIERS = [None, "standard", "priority"]

maybe = st.none() | st.integers(0, 40_000)


def _put(block: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        block[key] = value


@st.composite
def openai_usage(draw: st.DrawFn, responses: bool) -> dict[str, Any]:
    """A consistent OpenAI usage block: totals hold their parts; each detail may be
    missing (when missing, it is zero as far as the provider bills)."""
    cached, audio = draw(maybe), draw(maybe)
    cached_audio = draw(st.none() | st.integers(0, min(cached or 0, audio or 0)))
    text = draw(st.integers(0, 300_000))
    prompt = text + (cached or 0) + (audio or 0) - (cached_audio or 0)
    reasoning, audio_out = draw(maybe), draw(maybe)
    completion = draw(st.integers(0, 20_000)) + (reasoning or 0) + (audio_out or 0)
    in_details: dict[str, Any] = {}
    _put(in_details, "cached_tokens", cached)
    _put(in_details, "audio_tokens", audio)
    if cached_audio is not None:
        in_details["cached_tokens_details"] = {"audio_tokens": cached_audio}
    out_details: dict[str, Any] = {}
    _put(out_details, "reasoning_tokens", reasoning)
    _put(out_details, "audio_tokens", audio_out)
    names = (("input_tokens", "output_tokens", "input_tokens_details",
              "output_tokens_details") if responses else
             ("prompt_tokens", "completion_tokens", "prompt_tokens_details",
              "completion_tokens_details"))
    usage: dict[str, Any] = {names[0]: prompt, names[1]: completion,
                             "total_tokens": prompt + completion}
    if in_details or draw(st.booleans()):
        usage[names[2]] = in_details
    if out_details or draw(st.booleans()):
        usage[names[3]] = out_details
    return usage


@st.composite
def anthropic_usage(draw: st.DrawFn) -> dict[str, Any]:
    reads, long = draw(maybe), draw(maybe)
    short = draw(maybe)
    writes = (short or 0) + (long or 0)
    usage: dict[str, Any] = {"input_tokens": draw(st.integers(0, 250_000)),
                             "output_tokens": draw(st.integers(0, 20_000))}
    _put(usage, "cache_read_input_tokens", reads)
    if writes or draw(st.booleans()):
        usage["cache_creation_input_tokens"] = writes
    if short is not None or long is not None:
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": short or 0,
                                   "ephemeral_1h_input_tokens": long or 0}
    searches = draw(st.none() | st.integers(0, 20))
    if searches is not None:
        usage["server_tool_use"] = {"web_search_requests": searches,
                                    "web_fetch_requests": draw(st.integers(0, 5))}
    _put(usage, "service_tier", draw(st.sampled_from(ANTHROPIC_TIERS)))
    return usage


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


def search_items(web: int, files: int) -> list[dict[str, Any]]:
    return ([{"type": "web_search_call", "id": f"ws_{i}", "status": "completed",
              "action": {"type": "search", "query": "q"}} for i in range(web)]
            + [{"type": "file_search_call", "id": f"fs_{i}", "status": "completed",
                "queries": ["q"]} for i in range(files)])


@st.composite
def shapes(draw: st.DrawFn) -> dict[str, Any]:
    """One answer as it crosses the wire, and what the reference bills for it."""
    family = draw(st.sampled_from(["chat", "responses", "messages"]))
    stream = draw(st.booleans())
    if family == "messages":
        model = draw(st.sampled_from(ANTHROPIC_MODELS))
        usage = draw(anthropic_usage())
        return {"family": family, "stream": stream, "model": model, "usage": usage,
                "bill": ref.anthropic_bill(model, usage), "provider": "anthropic",
                "events": anthropic_events(usage) if stream else None}
    search_model = family == "chat" and draw(st.booleans())
    model = "gpt-4o-mini-search-preview" if search_model else draw(
        st.sampled_from(OPENAI_MODELS))
    usage = draw(openai_usage(family == "responses"))
    tier = draw(st.sampled_from(OPENAI_TIERS))
    web = files = 0
    if family == "responses":
        web, files = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    elif search_model:
        web = 1
    bill = ref.openai_bill("gpt-4o-mini" if search_model else model, usage, served_tier=tier,
                           web_searches=web, file_searches=files)
    body: dict[str, Any] = {"model": model, "usage": usage}
    _put(body, "service_tier", tier)
    if family == "responses":
        body["output"] = [*search_items(web, files),
                          {"type": "message", "id": "m", "role": "assistant", "content": []}]
    events = None
    if stream and family == "chat":
        base = {k: v for k, v in body.items() if k in ("model", "service_tier")}
        events = [_data({**base, "choices": [{"index": 0, "delta": {"content": "x"}}]}),
                  _data({**base, "choices": [], "usage": usage}), b"data: [DONE]\n\n"]
    elif stream:
        events = [_event({"type": "response.output_item.added", "output_index": i,
                          "item": item}) for i, item in enumerate(body["output"][:-1])]
        events.append(_event({"type": "response.completed", "response": body}))
    return {"family": family, "stream": stream, "model": model, "usage": usage, "bill": bill,
            "provider": "openai", "body": body, "events": events}


def anthropic_events(usage: dict[str, Any]) -> list[bytes]:
    """message_start with the input side (and nothing searched yet), message_delta with
    the cumulative totals (input fields repeated or not, as API versions differ)."""
    start = {k: v for k, v in usage.items() if k != "server_tool_use"}
    start["output_tokens"] = min(1, usage["output_tokens"])
    delta = {k: usage[k] for k in ("output_tokens", "server_tool_use", "input_tokens",
                                   "cache_read_input_tokens", "cache_creation_input_tokens")
             if k in usage}
    return [
        _event({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [], "usage": start}}),
        _event({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        _event({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "hi"}}),
        _event({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": delta}),
        _event({"type": "message_stop"}),
    ]


OPENAI = OpenAIAdapter()
ANTHROPIC = AnthropicAdapter()
HI: list[Any] = [{"role": "user", "content": "hi"}]


def request_body(shape: dict[str, Any]) -> dict[str, Any]:
    if shape["family"] == "messages":
        return {"model": shape["model"], "max_tokens": 100, "messages": HI,
                "stream": shape["stream"]}
    if shape["family"] == "responses":
        return {"model": shape["model"], "input": "hi", "stream": shape["stream"]}
    return {"model": shape["model"], "messages": HI, "stream": shape["stream"]}


def parse_usage(shape: dict[str, Any], ctx: RequestContext) -> None:
    """The adapter's own reading of the answer, whole or event by event."""
    adapter = ANTHROPIC if shape["family"] == "messages" else OPENAI
    assert ctx.req is not None
    if shape["events"] is None:
        payload = shape.get("body") or {"type": "message", "usage": shape["usage"]}
        ctx.usage = adapter.usage_from_body(ctx.api, payload)
        return
    observer = adapter.observer(ctx.req)
    for raw in shape["events"]:
        observer.on_event(raw)
    ctx.usage = observer.usage


def test_ledger_equals_the_provider_s_bill_for_random_usage(tmp_path: Path) -> None:
    from tokenstile.gateway.pricing import price_call

    config = parse_config({"limits": [{"scope": "project", "window": "day", "unit": "usd",
                                       "amount": 10**6}]}, "<test>", env={})
    pricer = Pricer()
    loop = asyncio.new_event_loop()
    db = SqliteDatabase(f"sqlite:///{tmp_path}/ledger.db")
    loop.run_until_complete(db.open())
    counter = iter(range(10**9))

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(shape=shapes())
    def check(shape: dict[str, Any]) -> None:
        n = next(counter)
        counters = MemoryCounterStore()
        admission = Admission(config, counters, pricer, SystemClock())
        api = shape["family"]
        wire = "anthropic" if api == "messages" else "openai"
        adapter = ANTHROPIC if wire == "anthropic" else OPENAI
        ctx = RequestContext(id=f"req-{n}", api=api, wire=wire, ts=1.0, started=0.0,
                             headers={}, caller=Caller(project=f"p{n}"),
                             req=adapter.parse(api, request_body(shape)))
        ctx.req.output_cap = 100
        ctx.served_model, ctx.upstream, ctx.provider = shape["model"], wire, shape["provider"]

        async def path() -> tuple[int, LedgerRow]:
            ticket = ctx.ticket = await admission.reserve(ctx)
            assert isinstance(ticket, Ticket)
            parse_usage(shape, ctx)
            price_call(pricer, ctx)
            await admission.settle(ticket, ctx.usage, ctx.cost_nano)
            [spent] = await counters.read([ticket.charges[0].key])
            await db.insert_ledger([ctx.ledger_row(1.0)])
            [row] = await db.ledger_rows(id=ctx.id)
            return spent, row

        spent, row = loop.run_until_complete(path())
        assert "unpriced_model" not in row.flags
        assert row.cost_nano == shape["bill"], shape
        assert spent == row.cost_nano  # the budget is charged what the ledger records

    try:
        check()
    finally:
        loop.run_until_complete(db.close())
        loop.close()


# --- through the gateway and the SDKs -----------------------------------------------------


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    family = draw(st.sampled_from(["chat", "responses", "messages", "chat_to_claude"]))
    small = st.integers(0, 3_000)
    directives: dict[str, Any] = {}
    if family in ("messages", "chat_to_claude"):
        model = draw(st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5"]))
        writes = draw(small)
        directives.update(cached_tokens=draw(small), cache_write_tokens=writes,
                          cache_write_1h_tokens=draw(st.integers(0, writes)),
                          web_searches=draw(st.integers(0, 5)),
                          service_tier=draw(st.sampled_from(["standard", "priority"])))
    else:
        model = draw(st.sampled_from(["gpt-audio", "gpt-5", "gpt-4o-mini"]))
        audio = draw(small)
        cached = draw(small)
        directives.update(input_audio_tokens=audio, output_audio_tokens=draw(small),
                          cached_tokens=cached, reasoning_tokens=draw(st.integers(0, 500)),
                          cached_audio_tokens=draw(st.integers(0, min(audio, cached))))
        if family == "responses":
            directives.update(web_searches=draw(st.integers(0, 4)),
                              file_searches=draw(st.integers(0, 4)))
        served = draw(st.sampled_from([None, "default", "flex", "priority"]))
        if served:
            directives["service_tier"] = served
    asked = draw(st.sampled_from([None, "default", "flex", "priority"])) \
        if family in ("chat", "responses") else None
    return {"family": family, "model": model, "stream": draw(st.booleans()),
            "directives": directives, "asked": asked}


def test_gateway_ledger_equals_the_provider_s_bill_through_the_sdks(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway: Gateway = make_gateway({"upstreams": {"anthropic": {
        "kind": "anthropic", "base_url": fake.url, "api_key": "sk-ant-upstream"}}})
    key = gateway.key()
    gpt = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    seen: set[str] = set()

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(call=calls())
    def check(call: dict[str, Any]) -> None:
        text = "Go. [[fake:" + ",".join(f"{k}={v}" for k, v in call["directives"].items()) \
            + "]]"
        model, stream, family = call["model"], call["stream"], call["family"]
        tier = {} if call["asked"] is None else {"service_tier": call["asked"]}
        fake.fake.reset()
        if family == "messages":
            params: dict[str, Any] = {"model": model, "max_tokens": 20,
                                      "messages": [{"role": "user", "content": text}]}
            if stream:
                with claude.messages.stream(**params) as events:
                    usage = events.get_final_message().usage.model_dump()
            else:
                usage = claude.messages.create(**params).usage.model_dump()
            bill = ref.anthropic_bill(model, usage)
        elif family == "responses":
            params = {"model": model, "input": text, "max_output_tokens": 20, **tier}
            if stream:
                response = list(gpt.responses.create(stream=True, **params))[-1].response
            else:
                response = gpt.responses.create(**params)
            kinds = [item.type for item in response.output]
            assert response.usage is not None
            bill = ref.openai_bill(model, response.usage.model_dump(),
                                   served_tier=response.service_tier,
                                   web_searches=kinds.count("web_search_call"),
                                   file_searches=kinds.count("file_search_call"))
        else:
            params = {"model": model, "max_tokens": 20, **tier,
                      "messages": [{"role": "user", "content": text}]}
            if stream:
                chunks = list(gpt.chat.completions.create(
                    stream=True, stream_options={"include_usage": True}, **params))
                seen_usage = chunks[-1].usage
                served_tier = chunks[-1].service_tier
            else:
                reply = gpt.chat.completions.create(**params)
                seen_usage, served_tier = reply.usage, reply.service_tier
            assert seen_usage is not None
            if family == "chat":
                bill = ref.openai_bill(model, seen_usage.model_dump(), served_tier=served_tier)
            else:  # the client sees chat usage; Anthropic bills its own
                record = fake.fake.tally.last
                assert record is not None
                bill = ref.anthropic_bill(model, {
                    "input_tokens": record.input_tokens - record.cached_tokens
                    - record.cache_write_tokens,
                    "cache_read_input_tokens": record.cached_tokens,
                    "cache_creation_input_tokens": record.cache_write_tokens,
                    "cache_creation": {
                        "ephemeral_1h_input_tokens": record.cache_write_1h_tokens},
                    "output_tokens": record.output_tokens,
                    "server_tool_use": {"web_search_requests": record.web_searches}})
        rows = [r for r in gateway.rows() if r.id not in seen]
        assert len(rows) == 1
        seen.add(rows[0].id)
        assert rows[0].cost_nano == bill, call

    check()


@pytest.mark.parametrize("model", [*OPENAI_MODELS, *ANTHROPIC_MODELS, "gpt-4o-mini-search-preview"])
def test_the_reference_prices_are_the_ones_genai_prices_records(model: str) -> None:
    """The hand-written reference and the price table agree on the plain token prices, so
    a property failure is a pricing rule, not a stale price."""
    price = Pricer().price_for(model)
    assert price is not None
    entry = (ref.ANTHROPIC | ref.OPENAI).get(model) or ref.OPENAI["gpt-4o-mini"]
    assert (price.input, price.output) == (entry.standard.input, entry.standard.output)
