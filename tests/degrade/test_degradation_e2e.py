"""Each degradation end to end through the openai SDK against the fake upstream: the client
gets an answer with less, told so in headers, and the ledger records the same."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle, Gateway
from tokenstile.clock import FakeClock


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def history(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question number {i} " * 8})
        messages.append({"role": "assistant", "content": f"answer number {i} " * 8})
    messages.append({"role": "user", "content": "and the latest question?"})
    return messages


def test_trim_keeps_system_and_newest_turns(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"features": {"chat": {"max_input": 150, "over_budget": "trim"}}})
    api = sdk(gateway, gateway.key(feature="chat"))
    messages = history(12)
    raw = api.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                        messages=messages, max_tokens=5)
    assert raw.headers["x-tokenstile-degraded"] == "trimmed"
    dropped = int(raw.headers["x-tokenstile-trimmed-messages"])
    record = fake.fake.tally.last
    assert record is not None
    sent = record.body["messages"]
    assert sent[0] == messages[0] and sent[-1] == messages[-1]
    assert sent[1:] == messages[len(messages) - len(sent) + 1:]
    assert len(sent) == len(messages) - dropped
    assert record.input_tokens <= 150 + 10  # the fake's own count of what it was sent
    [row] = gateway.rows()
    assert row.degraded == ["trimmed"] and row.detail["trimmed_messages"] == dropped


def test_without_trim_the_same_request_is_refused(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"features": {"chat": {"max_input": 150}}})
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk(gateway, gateway.key(feature="chat")).chat.completions.create(
            model="gpt-4o-mini", messages=history(12), max_tokens=5)
    assert "input tokens" in caught.value.message and "allows 150" in caught.value.message


def test_summarize_calls_the_cheap_model_and_bills_it(make_gateway: Any,
                                                      fake: FakeHandle) -> None:
    gateway = make_gateway({
        "features": {"chat": {"max_input": 200, "over_budget": "summarize"}},
        "degradation": {"summarize_model": "gpt-4o-mini"},
    })
    api = sdk(gateway, gateway.key(feature="chat", project="support"))
    raw = api.chat.completions.with_raw_response.create(model="gpt-4o", messages=history(12),
                                                        max_tokens=5)
    assert "summarized" in raw.headers["x-tokenstile-degraded"]
    summary_call, main_call = fake.fake.tally.records
    assert summary_call.model == "gpt-4o-mini" and main_call.model == "gpt-4o"
    assert "question number 0" in summary_call.body["messages"][1]["content"]
    summary_message = main_call.body["messages"][1]
    assert summary_message["role"] == "system"
    assert summary_message["content"].startswith("Summary of the earlier conversation: ")
    rows = gateway.rows()
    by_id = {r.id: r for r in rows}
    summary_row = next(r for r in rows if r.detail.get("summary_for"))
    main_row = by_id[summary_row.detail["summary_for"]]
    assert summary_row.project == main_row.project == "support"
    assert summary_row.feature == "chat" and summary_row.cost_nano > 0
    assert summary_row.output_tokens == summary_call.output_tokens
    assert "summarized" in main_row.degraded


def test_a_summary_answered_without_usage_is_billed_what_it_wrote(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({
        "features": {"chat": {"max_input": 200, "over_budget": "summarize"}},
        "degradation": {"summarize_model": "gpt-4o-mini"},
    })
    fake.fake.script([{"no_usage": True, "output_tokens": 60}, None])
    sdk(gateway, gateway.key(feature="chat")).chat.completions.create(
        model="gpt-4o", messages=history(12), max_tokens=5)
    summary_call = fake.fake.tally.records[0]
    summary_row = next(r for r in gateway.rows() if r.detail.get("summary_for"))
    assert summary_row.estimated and summary_call.output_tokens == 60
    assert summary_row.output_tokens == 60 and summary_row.cost_nano > 0


def test_downgrade_switches_model_past_the_threshold(make_gateway: Any,
                                                     fake: FakeHandle) -> None:
    gateway = make_gateway({"limits": [{
        "name": "daily", "scope": "project", "window": "day", "unit": "tokens",
        "amount": 1000, "thresholds": [
            {"threshold": 0.05, "action": "downgrade", "downgrade_to": "gpt-4o-mini"},
            {"threshold": 1.0, "action": "block"}]}]})
    api = sdk(gateway, gateway.key())
    first = api.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
    assert "x-tokenstile-degraded" not in first.headers
    second = api.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
    assert second.headers["x-tokenstile-degraded"] == "downgraded"
    assert second.headers["x-tokenstile-served-model"] == "gpt-4o-mini"
    assert [r.model for r in fake.fake.tally.records] == ["gpt-4o", "gpt-4o-mini"]
    rows = gateway.rows()
    assert (rows[1].requested_model, rows[1].served_model, rows[1].degraded) == (
        "gpt-4o", "gpt-4o-mini", ["downgraded"])


def test_an_exhausted_usd_budget_falls_back_to_the_cheaper_model(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({
        "limits": [{"name": "tiny-usd", "scope": "project", "window": "day", "unit": "usd",
                    "amount": 0.002, "thresholds": [
                        {"threshold": 1.0, "action": "block", "fallback": ["downgrade"]}]}],
        "degradation": {"downgrade": {"gpt-4o": "gpt-4o-mini"}},
    })
    api = sdk(gateway, gateway.key())
    raw = api.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=500)
    assert raw.headers["x-tokenstile-served-model"] == "gpt-4o-mini"
    assert fake.fake.tally.last is not None and fake.fake.tally.last.model == "gpt-4o-mini"
    [row] = gateway.rows()
    assert row.outcome == "ok" and row.degraded == ["downgraded"]


async def test_throttle_paces_and_refuses_past_the_max_wait(make_gateway: Any,
                                                           fake: FakeHandle) -> None:
    import asyncio

    import aiohttp

    clock = FakeClock()  # stands still: the pacer's waits are computed, not measured
    gateway = make_gateway({
        "limits": [{"name": "daily", "scope": "project", "window": "day",
                    "unit": "requests", "amount": 1000, "thresholds": [
                        {"threshold": 0.003, "action": "throttle", "reduction": 0.5}]}],
        "degradation": {"throttle_max_wait_s": 1.5},
    }, clock=clock)
    key = gateway.key()
    body = {"model": "gpt-4o-mini", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]}
    results = []
    async with aiohttp.ClientSession() as session:
        for _ in range(8):
            async with session.post(gateway.v1 + "/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {key}"}) as resp:
                await resp.read()
                results.append((resp.status, resp.headers.get("x-tokenstile-queue-ms"),
                                resp.headers.get("retry-after")))
            await asyncio.sleep(0)
    statuses = [status for status, _, _ in results]
    assert statuses[:3] == [200, 200, 200]  # under the threshold: not paced
    paced = [int(ms) for status, ms, _ in results if status == 200 and ms]
    assert paced and all(ms > 0 for ms in paced)
    assert 429 in statuses  # the queue grew past 1.5 s: refused with Retry-After
    assert all(retry for status, _, retry in results if status == 429)
    rows = gateway.rows()
    assert any(r.degraded == ["throttled"] for r in rows)
    assert any(r.block_reason == "throttled:daily" for r in rows)


def test_fallback_survives_an_upstream_that_returns_500s(make_gateway: Any,
                                                         fake: FakeHandle) -> None:
    gateway = make_gateway({"resilience": {
        "retries": 1, "backoff_s": 0.01, "fallbacks": {"gpt-4o": ["gpt-4o-mini"]}}})
    fake.fake.script(["[[fake:status=500]]", "[[fake:status=503]]", None])
    raw = sdk(gateway, gateway.key()).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert raw.headers["x-tokenstile-degraded"] == "fallback"
    assert raw.headers["x-tokenstile-served-model"] == "gpt-4o-mini"
    assert [(r.model, r.status) for r in fake.fake.tally.records] == [
        ("gpt-4o", 500), ("gpt-4o", 503), ("gpt-4o-mini", 200)]
    [row] = gateway.rows()
    assert [a["status"] for a in row.detail["attempts"]] == [500, 503, 200]
    assert row.output_tokens == 3 and row.cost_nano > 0  # only the answer is billed


def test_fallback_survives_an_upstream_that_hangs(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"resilience": {
        "first_byte_timeout_s": 0.5, "retry_timeouts": True,
        "fallbacks": {"gpt-4o": ["gpt-4o-mini"]}}})
    fake.fake.script(["[[fake:hang]]", None])
    reply = sdk(gateway, gateway.key()).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.choices[0].message.content
    # The hung attempt may have been billed: it has a row of its own.
    row, hung = sorted(gateway.rows(), key=lambda r: r.id)
    assert row.served_model == "gpt-4o-mini"
    assert row.detail["attempts"][0]["error"] == "upstream_timeout"
    assert hung.served_model == "gpt-4o" and "charged_at_estimate" in hung.flags


def test_the_circuit_opens_after_repeated_failures(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"resilience": {"circuit_breaker": {"failures": 2,
                                                               "cooldown_s": 60}}})
    api = sdk(gateway, gateway.key())
    fake.fake.script(["[[fake:status=502]]", "[[fake:status=502]]"])
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            api.chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                        messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIStatusError) as caught:
        api.chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                    messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503 and "circuit open" in caught.value.message
    assert fake.fake.tally.requests == 2  # the third never reached the failing upstream


async def test_queue_depth_is_a_metric(make_gateway: Any, fake: FakeHandle) -> None:
    import asyncio

    import aiohttp

    clock = FakeClock()
    gateway = make_gateway({
        "limits": [{"name": "daily", "scope": "project", "window": "day",
                    "unit": "requests", "amount": 1000, "thresholds": [
                        {"threshold": 0.001, "action": "throttle", "reduction": 0.1}]}],
        "degradation": {"throttle_max_wait_s": 30},
    }, clock=clock)
    key = gateway.key()
    body = {"model": "gpt-4o-mini", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]}

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.post(gateway.v1 + "/chat/completions", json=body,
                                headers={"authorization": f"Bearer {key}"}) as resp:
            await resp.read()

    async with aiohttp.ClientSession() as session:
        waiting = [asyncio.create_task(one(session)) for _ in range(4)]
        depth = total = 0.0
        for _ in range(100):
            async with session.get(gateway.url + "/metrics") as resp:
                text = await resp.text()
            gauges = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
                      if ln.startswith("tokenstile_throttle_queue_depth")}
            depth = gauges["tokenstile_throttle_queue_depth"]
            total = gauges["tokenstile_throttle_queue_depth_total"]
            if depth > 0:
                break
            await asyncio.sleep(0.05)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    assert depth >= 1
    assert total >= depth  # one process: every waiting slot is its own
