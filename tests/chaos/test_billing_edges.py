"""Billing at the edges the chaos run exercises: a reservation is held until the request's
ledger row is written (so a crash in between is still billed), and an answer the upstream
cut mid-body is billed at its cap (it was generated whole before it was sent)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import FakeHandle, Gateway
from tokenstile.limits.counter_keys import counter_key


def counter(gateway: Gateway, project: str) -> int:
    rt = gateway.runtime
    [limit] = [lim for lim in rt.admission.limits if lim.scope == "project"]
    key, _ = counter_key(limit, project, rt.clock.now())
    return int(gateway.run(rt.counters.read([key]))[0])


def test_a_reservation_is_held_until_the_ledger_row_is_written(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway: Gateway = make_gateway({"projects": {"p": {"daily_limit": 100_000}}})
    key = gateway.key(project="p")
    rt = gateway.runtime
    gate = asyncio.Event()
    insert = rt.db.insert_ledger

    async def slow_insert(rows: Any) -> None:
        await gate.wait()
        await insert(rows)

    rt.db.insert_ledger = slow_insert  # type: ignore[method-assign]
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    api.chat.completions.create(model="gpt-4o-mini", max_tokens=30,
                                messages=[{"role": "user", "content": "hi"}])
    time.sleep(0.3)
    # answered, row not written yet: the worst case stays reserved under a live lease
    assert len(rt.admission.leases.live) == 1
    reserved = counter(gateway, "p")
    gateway.run(_set(gate))
    rows = gateway.rows()
    deadline = time.monotonic() + 5
    while rt.admission.leases.live:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    [row] = rows
    assert counter(gateway, "p") == row.input_tokens + row.output_tokens < reserved
    assert row.output_tokens < 30


async def _set(event: asyncio.Event) -> None:
    event.set()


def test_an_answer_cut_mid_body_is_billed_at_its_cap(gateway: Gateway,
                                                     fake: FakeHandle) -> None:
    key = gateway.key()
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        api.chat.completions.create(model="gpt-4o-mini", max_tokens=25, messages=[
            {"role": "user", "content": "hello [[fake:cut_after=1]]"}])
    assert caught.value.status_code == 502
    assert "broke before the answer was complete" in caught.value.message
    [row] = gateway.rows()
    [record] = fake.fake.tally.records
    assert record.outcome == "cut"
    assert row.outcome == "upstream_cut" and row.estimated and "billed_at_cap" in row.flags
    assert row.input_tokens == record.input_tokens
    assert row.output_tokens == 25 >= record.output_tokens


async def test_a_client_that_hangs_up_is_billed_what_was_relayed(
        gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    body = {"model": "gpt-4o-mini", "max_tokens": 40, "stream": True, "messages": [
        {"role": "user", "content": "go [[fake:chunk_delay_ms=40,output_tokens=30]]"}]}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gateway.v1 + "/chat/completions", json=body,
                                  headers={"authorization": f"Bearer {key}"})
        seen = b""
        async for chunk in resp.content.iter_any():
            seen += chunk
            if seen.count(b'"content"') >= 3:
                break
        resp.close()
    assert fake.fake.tally.wait_for(lambda t: t.requests == 1)
    [row] = gateway.rows()
    [record] = fake.fake.tally.records
    assert row.outcome == "client_disconnect" and row.estimated
    assert row.input_tokens == record.input_tokens
    assert 2 <= row.output_tokens <= record.output_tokens < 30  # the first chunk is empty
