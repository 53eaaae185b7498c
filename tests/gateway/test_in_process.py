"""The request path in process (``tests/in_process.py``): the official SDKs talk to the ASGI
app through httpx's ASGI transport, on a fake clock that the tests move by hand."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import openai
import pytest

HI = [{"role": "user", "content": "hello"}]
DAY = 86_400.0


async def test_a_call_is_billed_what_the_upstream_reported(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=HI,
                                                  max_tokens=20)
    assert answer.usage is not None
    [row] = await gw.rows()
    assert (row.input_tokens, row.output_tokens) == (answer.usage.prompt_tokens,
                                                     answer.usage.completion_tokens)
    assert row.project == "demo" and row.user == "alice" and row.outcome == "ok"
    assert row.cost_nano > 0 and not row.estimated
    assert row.ts == gw.clock.now()  # stamped by the injected clock


async def test_a_daily_budget_refuses_then_resets_when_the_clock_moves(in_process: Any) -> None:
    gw = await in_process({"limits": [{"name": "daily", "scope": "project", "unit": "tokens",
                                 "window": "day", "amount": 200}]})
    client = gw.openai(await gw.key())
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=100)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI,
                                             max_tokens=190)
    assert "project 'demo'" in refused.value.message
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "200"
    gw.clock.advance(DAY)  # the next day's window, without waiting for it
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=190)
    rows = await gw.rows()
    assert [r.outcome for r in rows] == ["ok", "blocked", "ok"]
    assert rows[1].block_reason == "budget:daily"


async def test_a_stream_is_relayed_and_counted(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=HI, max_tokens=20, stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text and usage is not None
    [row] = await gw.rows()
    assert row.streamed and row.output_tokens == usage.completion_tokens


async def test_anthropic_messages_in_process(in_process: Any) -> None:
    gw = await in_process({"limits": [{"name": "spend", "scope": "project", "unit": "usd",
                                 "window": "day", "amount": 5}]})
    client = gw.anthropic(await gw.key())
    message = await client.messages.create(model="claude-haiku-4-5", max_tokens=30,
                                           messages=[{"role": "user", "content": "hi"}])
    [row] = await gw.rows()
    assert row.output_tokens == message.usage.output_tokens
    assert row.upstream == "anthropic" and row.cost_nano > 0


async def test_bad_json_is_refused_in_the_clients_shape_and_recorded(in_process: Any) -> None:
    gw = await in_process({})
    key = await gw.key()
    async with httpx.AsyncClient(transport=gw.transport, base_url="http://gateway") as http:
        resp = await http.post("/v1/chat/completions", content=b'{"model": ',
                               headers={"authorization": f"Bearer {key}",
                                        "content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_json"
    [row] = await gw.rows()
    assert (row.status, row.outcome, row.block_reason) == (400, "error", "invalid_json")
    assert row.project == "demo" and row.input_tokens == 0


async def test_a_reload_builds_a_new_gateway_and_keeps_the_counters(in_process: Any) -> None:
    gw = await in_process({"limits": [{"name": "daily", "scope": "project", "unit": "tokens",
                                 "window": "day", "amount": 10_000}]})
    client = gw.openai(await gw.key())
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=100)
    [first] = await gw.rows()
    before = gw.app.gateway.get()
    config = gw.runtime.config
    room = first.input_tokens + first.output_tokens + 50  # less than another call needs
    tighter = config.model_copy(update={
        "limits": [config.limits[0].model_copy(update={"amount": room})]})
    gw.runtime.reconfigure(tighter)
    assert gw.app.gateway.get() is not before
    with pytest.raises(openai.RateLimitError):  # the tokens used before still count
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI,
                                             max_tokens=100)


async def test_an_encoding_not_loaded_yet_loads_in_a_thread_not_on_the_event_loop(
        in_process: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway is ready before its tokenizers are: the first request of a model whose
    encoding is not loaded waits for it in a thread, and is counted as any other."""
    import threading

    from tokenstile import tokens

    gw = await in_process({})
    client = gw.openai(await gw.key())
    loop_thread = threading.get_ident()
    loaded_in: list[int] = []
    real_load = tokens.load_tokenizer

    def load(model: str) -> None:
        loaded_in.append(threading.get_ident())
        real_load(model)

    monkeypatch.setattr(tokens, "_ready_models", set())
    monkeypatch.setattr(tokens, "_counters", {})  # as if no encoding were loaded yet
    monkeypatch.setattr(tokens, "load_tokenizer", load)
    tokens._model.cache_clear()
    try:
        answer = await client.chat.completions.create(model="gpt-3.5-turbo", messages=HI,
                                                      max_tokens=20)
        assert loaded_in and loop_thread not in loaded_in
        assert tokens.tokenizer_ready("gpt-3.5-turbo")
        assert not tokens.tokenizer_ready("gpt-4o")  # cl100k only: o200k still to load
        loaded = len(loaded_in)
        await client.chat.completions.create(model="gpt-3.5-turbo", messages=HI, max_tokens=20)
        assert len(loaded_in) == loaded  # loaded once
    finally:
        tokens._model.cache_clear()
    assert answer.usage is not None
    rows = await gw.rows()
    assert rows[0].input_tokens == answer.usage.prompt_tokens
