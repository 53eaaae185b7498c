"""The Batch API end to end through the ``openai`` SDK: an input file is counted line by
line on upload, the batch is reserved at the worst case of every line at the batch
discount, and billed once, from its output file, when it ends: seen by a client or by the
poller, across a restart, or charged at its estimate when it never ends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle
from tests.in_process import InProcess
from tokenstile.clock import FakeClock
from tokenstile.gateway.runtime import Runtime
from tokenstile.types import LedgerRow

MODEL = "gpt-4o-mini"
# gpt-4o-mini at the batch discount: half of $0.15 / $0.60 per million tokens, in nano-USD
IN_NANO, OUT_NANO = 75, 300
FAST = {"background_responses": {"first_poll_s": 1, "max_poll_interval_s": 1}}


def spend(amount: float) -> dict[str, Any]:
    return {**FAST, "limits": [{"name": "spend", "scope": "project", "unit": "usd",
                                "window": "day", "amount": amount}]}


def jsonl(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(n: int, text: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": text}],
                     **body}}


THREE = jsonl(chat_line(1, "one [[fake:output_tokens=7]]", max_tokens=50),
              chat_line(2, "two [[fake:output_tokens=9]]", max_tokens=50),
              chat_line(3, "three [[fake:output_tokens=5]]"))


async def submit(gw: InProcess, client: openai.AsyncOpenAI, data: bytes = THREE) -> Any:
    uploaded = await client.files.create(file=("in.jsonl", data), purpose="batch")
    return await client.batches.create(input_file_id=uploaded.id, completion_window="24h",
                                       endpoint="/v1/chat/completions")


def line_cost(records: list[Any]) -> int:
    return sum(r.input_tokens * IN_NANO + r.output_tokens * OUT_NANO for r in records)


def batch_rows(rows: list[LedgerRow]) -> list[LedgerRow]:
    return [r for r in rows if r.api == "batches"]


async def test_a_batch_is_reserved_on_submit_and_billed_from_its_output(
        in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process(spend(1.0))
    client = gw.openai(await gw.key())
    batch = await submit(gw, client)
    assert batch.status == "validating"
    [upload] = await gw.rows()  # the batch has no row until it ends
    assert (upload.api, upload.cost_nano, upload.served_model) == ("files", 0, MODEL)
    # The line without a cap was uploaded with the gateway's default one.
    sent = [json.loads(line) for line in
            fake.fake.batches.files[batch.input_file_id].content.splitlines()]
    assert sent[2]["body"]["max_tokens"] == gw.runtime.config.server.default_output_tokens
    pending = await gw.runtime.db.get_response(batch.id)
    assert pending is not None and pending.state == "pending"
    lines = pending.record["lines"]
    assert lines["lines"] == 3 and lines["supplied_caps"] == 1
    [[key, reserved, *_]] = pending.record["ticket"]["charges"]
    assert reserved == lines["input_tokens"] * IN_NANO + lines["output_tokens"] * OUT_NANO
    assert (await gw.runtime.counters.read([key]))[0] == reserved
    records = fake.fake.finish_batch(batch.id)
    done = await client.batches.retrieve(batch.id)  # the client sees it end: settled now
    assert done.status == "completed" and done.output_file_id
    [row] = batch_rows(await gw.rows())
    assert (row.input_tokens, row.output_tokens) == (sum(r.input_tokens for r in records),
                                                     7 + 9 + 5)
    assert row.cost_nano == line_cost(records) and not row.estimated
    assert row.outcome == "ok" and row.id == pending.rid and row.served_model == MODEL
    assert row.detail["batch"]["id"] == batch.id and row.detail["batch"]["answered"] == 3
    assert row.detail["batch"]["settled_by"] == "client"
    assert (await gw.runtime.counters.read([key]))[0] == row.cost_nano
    output = await client.files.content(done.output_file_id)  # readable by its project
    assert len(output.text.splitlines()) == 3
    await client.batches.retrieve(batch.id)  # seen again: still one row
    assert len(batch_rows(await gw.rows())) == 1


async def test_the_poller_bills_a_batch_nobody_asks_about(in_process: Any,
                                                         fake: FakeHandle) -> None:
    gw = await in_process(FAST)
    client = gw.openai(await gw.key())
    batch = await submit(gw, client)
    records = fake.fake.finish_batch(batch.id, status="cancelled", lines=2)
    gw.clock.advance(5)
    await gw.runtime.background.step()
    [row] = batch_rows(await gw.rows())
    assert row.outcome == "cancelled" and row.detail["batch"]["settled_by"] == "poller"
    assert row.detail["batch"]["answered"] == 2 and row.cost_nano == line_cost(records)


async def test_a_batch_whose_worst_case_does_not_fit_is_refused(in_process: Any,
                                                                fake: FakeHandle) -> None:
    # 50 + 50 + 64 tokens out: $0.00005 at the discount
    gw = await in_process({**spend(0.0001), "server": {"default_output_tokens": 64}})
    client = gw.openai(await gw.key())
    big = jsonl(*(chat_line(n, "hi", max_tokens=4000) for n in range(3)))
    with pytest.raises(openai.RateLimitError):  # 12,000 tokens out: $0.0036
        await submit(gw, client, big)
    assert not fake.fake.batches.batches  # never created upstream
    await submit(gw, client)
    rows = await gw.rows()
    assert [(r.api, r.outcome) for r in rows] == [("files", "ok"), ("batches", "blocked"),
                                                  ("files", "ok")]


async def test_a_failed_batch_costs_nothing_and_a_lost_one_its_estimate(
        in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process(FAST)
    client = gw.openai(await gw.key())
    failed = await submit(gw, client)
    fake.fake.finish_batch(failed.id, status="failed")
    await client.batches.retrieve(failed.id)
    lost = await submit(gw, client)
    fake.fake.batches.batches.pop(lost.id)  # the upstream forgot it
    gw.clock.advance(3 * 86_400)  # past the wait a batch is given
    await gw.runtime.background.step()
    first, second = batch_rows(await gw.rows())
    assert (first.outcome, first.cost_nano) == ("upstream_error", 0)
    entry = await gw.runtime.db.get_response(lost.id)
    assert entry is not None and entry.state == "settled"
    assert second.cost_nano == entry.record["estimate"]["cost_nano"] > 0
    assert second.estimated and "charged_at_estimate" in second.flags


async def test_batches_and_files_belong_to_the_project_that_made_them(
        in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process({})
    mine = gw.openai(await gw.key(project="mine"))
    theirs = gw.openai(await gw.key(project="theirs"))
    batch = await submit(gw, mine)
    with pytest.raises(openai.NotFoundError):
        await theirs.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.batches.create(input_file_id=batch.input_file_id,
                                    completion_window="24h",
                                    endpoint="/v1/chat/completions")
    with pytest.raises(openai.NotFoundError):
        await theirs.files.content(batch.input_file_id)
    assert (await mine.batches.cancel(batch.id)).status == "cancelling"


async def test_batch_files_are_checked_line_by_line(in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    mixed = jsonl(chat_line(1, "a"), {**chat_line(2, "b"), "body": {
        "model": "gpt-4o", "messages": [{"role": "user", "content": "b"}]}})
    with pytest.raises(openai.BadRequestError) as refused:
        await client.files.create(file=("in.jsonl", mixed), purpose="batch")
    assert "line 2" in refused.value.message and "one model" in refused.value.message
    with pytest.raises(openai.BadRequestError) as wrong:
        await client.files.create(file=("doc.pdf", b"%PDF"), purpose="assistants")
    assert "Batch API only" in wrong.value.message
    assert not fake.fake.batches.files


async def test_a_restarted_gateway_bills_the_batch_its_predecessor_left(
        in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process(FAST)
    client = gw.openai(await gw.key())
    batch = await submit(gw, client)
    config = gw.runtime.config
    await gw.runtime.stop()  # hands its pending entries over
    records = fake.fake.finish_batch(batch.id)
    successor = Runtime.build(config, clock=FakeClock())
    written: list[LedgerRow] = []
    seen = asyncio.Event()

    def heard(rows: list[LedgerRow]) -> None:
        written.extend(batch_rows(rows))
        if written:
            seen.set()

    successor.ledger.listeners.append(heard)
    await successor.start()  # its poller adopts the batch left behind and polls it
    try:
        await successor.background.step()
        await asyncio.wait_for(seen.wait(), 10)
        [row] = written
        assert row.cost_nano == line_cost(records)
        assert row.detail["batch"]["settled_by"] == "poller"
    finally:
        await successor.stop()
