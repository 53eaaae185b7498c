"""Responses created with ``background: true`` answer ``queued`` with no usage and generate
afterwards: the gateway keeps their reservation and bills them, once, when they end,
whether or not the client ever asks again, and across a restart or a crashed gateway."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest

from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway, settled
from tokenstile.clock import FakeClock
from tokenstile.prices import Pricer
from tokenstile.types import LedgerRow, Usage, usd_to_nano

if TYPE_CHECKING:
    from tokenstile.stores.responses import StoredResponse

MODEL = "gpt-4o-mini"
FAST = {"first_poll_s": 0.05, "max_poll_interval_s": 0.1}
SLOW = {"first_poll_s": 3600, "max_poll_interval_s": 3600}  # only clients find the end
DAILY_USD = [{"name": "daily", "scope": "project", "window": "day", "unit": "usd",
              "amount": 1.00}]


class Written:
    """Ledger rows as the gateway writes them, to wait on without sleeping."""

    def __init__(self, gateway: Gateway) -> None:
        self.rows: list[LedgerRow] = []
        self._cond = threading.Condition()
        gateway.runtime.ledger.listeners.append(self._heard)

    def _heard(self, rows: list[LedgerRow]) -> None:
        with self._cond:
            self.rows.extend(rows)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[LedgerRow]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.rows) >= count, timeout), self.rows
            return list(self.rows)


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def billed(fake: FakeHandle, response_id: str) -> Any:
    [record] = [r for r in fake.fake.tally.records
                if r.method == "BACKGROUND" and r.request_id == response_id]
    return record


def entry(gateway: Gateway, response_id: str) -> StoredResponse:
    found = gateway.run(gateway.runtime.db.get_response(response_id))
    assert found is not None
    return found


def counter(gateway: Gateway, key: str) -> int:
    [value] = gateway.run(gateway.runtime.counters.read([key]))
    return int(value)


def settled_counter(gateway: Gateway, key: str, expected: int) -> int:
    """The counter once it reads ``expected`` (or after five seconds): the settle follows
    the row's write."""
    return settled(lambda: counter(gateway, key), expected.__eq__)


def cost(record: Any) -> int:
    usage = Usage(input_tokens=record.input_tokens, output_tokens=record.output_tokens,
                  cached_input_tokens=record.cached_tokens)
    return Pricer().cost_nano(MODEL, usage) or 0


def test_a_background_response_is_billed_when_it_ends_without_the_client_asking(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": FAST, "limits": DAILY_USD})
    written = Written(gateway)
    api = sdk(gateway, gateway.key(project="p"))
    created = api.responses.create(model=MODEL, background=True, max_output_tokens=40,
                                   input="write a poem [[fake:background_hold]]")
    assert created.status == "queued" and created.usage is None
    pending = entry(gateway, created.id)
    assert pending.state == "pending" and pending.project == "p"
    [[key, reserved, *_]] = pending.record["ticket"]["charges"]
    # Polled while it runs: nothing billed yet, the reservation held and renewed.
    assert fake.fake.tally.wait_for(lambda t: t.requests >= 3)
    assert gateway.rows() == []
    assert counter(gateway, key) == reserved > 0
    assert pending.rid in gateway.runtime.admission.leases.live
    assert fake.fake.finish_background(created.id)
    [row] = written.wait(1)
    record = billed(fake, created.id)
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens,
                                                     record.output_tokens)
    assert record.output_tokens == 12 and not row.estimated
    assert row.cost_nano == cost(record) > 0
    assert row.outcome == "ok" and row.id == pending.rid
    assert row.detail["background"]["settled_by"] == "poller"
    assert row.detail["background"]["response_id"] == created.id
    # the reservation became the usage
    assert settled_counter(gateway, key, row.cost_nano) == row.cost_nano
    assert settled(lambda: entry(gateway, created.id).state, "settled".__eq__) == "settled"
    live = gateway.runtime.admission.leases.live
    assert settled(lambda: pending.rid in live, False.__eq__) is False
    assert len(gateway.rows()) == 1
    assert not any(r.method == "GET" and r.route.endswith(created.id) and
                   r.api_key != UPSTREAM_KEY for r in fake.fake.tally.records)


def test_background_responses_never_pass_a_hard_limit(make_gateway: Any,
                                                      fake: FakeHandle) -> None:
    """Each holds its worst case until it ends: ten that would cost $0.20 in all cannot
    start under a $0.10 budget (the reservation used to be released at once)."""
    gateway = make_gateway({"background_responses": FAST, "limits": [
        {"scope": "project", "window": "day", "unit": "usd", "amount": 0.10}]})
    written = Written(gateway)
    api = sdk(gateway, gateway.key(project="p"))
    started, refused = [], 0
    for i in range(10):
        try:
            started.append(api.responses.create(
                model="gpt-4o", background=True, max_output_tokens=2000,
                input=f"essay {i} [[fake:output_tokens=2000,background_hold]]").id)
        except openai.RateLimitError:
            refused += 1
    assert refused and len(started) + refused == 10
    for response_id in started:
        assert fake.fake.finish_background(response_id)
    rows = [r for r in written.wait(10) if r.outcome == "ok"]  # and a row per refusal
    assert len(rows) == len(started)
    pricer = Pricer()
    upstream = sum(pricer.cost_nano("gpt-4o", Usage(input_tokens=r.input_tokens,
                                                    output_tokens=r.output_tokens)) or 0
                   for r in fake.fake.tally.records if r.method == "BACKGROUND")
    assert sum(row.cost_nano for row in rows) == upstream <= usd_to_nano(0.10)
    assert all(row.output_tokens == 2000 for row in rows)


def test_a_client_that_sees_the_end_settles_it_once(make_gateway: Any,
                                                    fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": SLOW})
    api = sdk(gateway, gateway.key(project="p"))
    created = api.responses.create(model=MODEL, background=True, max_output_tokens=40,
                                   input="count [[fake:background_polls=2]]")
    assert api.responses.retrieve(created.id).status == "in_progress"
    assert gateway.rows() == []
    done = api.responses.retrieve(created.id)
    assert done.status == "completed" and done.usage is not None
    [row] = gateway.rows()  # written before the client heard of the end
    assert row.output_tokens == done.usage.output_tokens == 12
    assert row.detail["background"]["settled_by"] == "client"
    for _ in range(2):
        assert api.responses.retrieve(created.id).status == "completed"
    items = list(api.responses.input_items.list(created.id))
    assert items and items[0].type == "message"
    api.responses.delete(created.id)
    assert len(gateway.rows()) == 1
    with pytest.raises(openai.NotFoundError):  # the upstream forgot it
        api.responses.retrieve(created.id)


def test_cancel_bills_what_the_cancelled_response_used(make_gateway: Any,
                                                       fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": SLOW, "limits": DAILY_USD})
    api = sdk(gateway, gateway.key(project="p"))
    created = api.responses.create(model=MODEL, background=True, max_output_tokens=40,
                                   input="a long essay [[fake:background_hold,output_tokens=30]]")
    assert api.responses.retrieve(created.id).status == "in_progress"
    with pytest.raises(openai.APIStatusError) as refused:  # running: cancel it first
        api.responses.delete(created.id)
    assert refused.value.status_code == 409
    cancelled = api.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.usage is not None
    [row] = gateway.rows()
    record = billed(fake, created.id)
    assert row.output_tokens == record.output_tokens == 15  # half the reply was generated
    assert row.input_tokens == record.input_tokens and row.cost_nano == cost(record)
    assert row.outcome == "cancelled" and row.detail["background"]["status"] == "cancelled"
    api.responses.delete(created.id)


def test_only_the_project_that_created_a_response_reaches_it(make_gateway: Any,
                                                             fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": SLOW})
    mine = sdk(gateway, gateway.key(project="p", user="alice"))
    created = mine.responses.create(model=MODEL, background=True, input="secret plans",
                                    max_output_tokens=10)
    stored = mine.responses.create(model=MODEL, input="not in the background",
                                   max_output_tokens=20)
    other = sdk(gateway, gateway.key(project="q"))
    for response_id in (created.id, stored.id, "resp_never_seen"):
        with pytest.raises(openai.NotFoundError) as caught:
            other.responses.retrieve(response_id)
        assert "was created through this gateway for project 'q'" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        other.responses.cancel(created.id)
    with pytest.raises(openai.NotFoundError):
        list(other.responses.input_items.list(created.id))
    colleague = sdk(gateway, gateway.key(project="p", user="bob"))
    assert colleague.responses.retrieve(stored.id).status == "completed"
    assert colleague.responses.retrieve(created.id).status == "in_progress"
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "ts-not-a-key").responses.retrieve(created.id)
    gets = [r for r in fake.fake.tally.records if r.method == "GET"]
    assert len(gets) == 2  # refused callers never reached the upstream


def _stores(tmp_path: Path) -> dict[str, Any]:
    return {"storage": {"counters": f"sqlite:///{tmp_path}/counters.db",
                        "database": f"sqlite:///{tmp_path}/shared.db"}}


def test_a_restarted_gateway_finishes_settling(make_gateway: Any, fake: FakeHandle,
                                               tmp_path: Path) -> None:
    config = {**_stores(tmp_path), "background_responses": SLOW, "limits": DAILY_USD}
    first = make_gateway(config)
    created = sdk(first, first.key(project="p")).responses.create(
        model=MODEL, background=True, max_output_tokens=40,
        input="think hard [[fake:background_hold]]")
    [[key, reserved, *_]] = entry(first, created.id).record["ticket"]["charges"]
    first.close()  # a clean stop hands its background responses over
    assert fake.fake.finish_background(created.id)
    second = make_gateway({**config, "background_responses": FAST})
    [row] = Written(second).wait(1)
    record = billed(fake, created.id)
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens,
                                                     record.output_tokens)
    assert not row.estimated and row.detail["background"]["settled_by"] == "poller"
    assert settled_counter(second, key, row.cost_nano) == row.cost_nano < reserved
    assert len(second.rows()) == 1


def test_a_client_get_through_another_gateway_settles_it_once(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    """Two gateways share the stores: one follows the response, the client asks the other;
    whichever sees the end first bills it, and only it."""
    config = {**_stores(tmp_path), "limits": DAILY_USD}
    owner = make_gateway({**config, "background_responses": FAST})
    other = make_gateway({**config, "background_responses": SLOW})
    key = owner.key(project="p")
    created = sdk(owner, key).responses.create(model=MODEL, background=True,
                                               max_output_tokens=40,
                                               input="x [[fake:background_hold]]")
    [[counter_key, reserved, *_]] = entry(owner, created.id).record["ticket"]["charges"]
    assert fake.fake.finish_background(created.id)
    done = sdk(other, key).responses.retrieve(created.id)
    assert done.status == "completed"
    [row] = other.rows()
    # The owner polls every 50 ms: under load its poll may see the end before the client.
    assert row.detail["background"]["settled_by"] in ("client", "poller")
    assert settled_counter(other, counter_key, row.cost_nano) == row.cost_nano < reserved
    # The owner's own poll finds it settled already (or settled it) and lets it go.
    assert owner.run(_poll_now(owner)) == 0
    assert [r.id for r in owner.rows()] == [row.id]


async def _poll_now(gateway: Gateway) -> int:
    background = gateway.runtime.background
    for tracked in background._tracked.values():
        tracked.due = 0.0
    await background.step()
    return background.pending


def test_a_crashed_gateways_background_response_is_billed_its_real_usage(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    """The gateway dies: its reservation runs out and crash recovery claims it, its entry's
    lease runs out and another gateway adopts it. One row, with the real usage."""
    clock = FakeClock()
    config = {**_stores(tmp_path), "background_responses": FAST, "limits": DAILY_USD,
              "server": {"reservation_lease_s": 30}}
    dead = make_gateway(config, clock=clock)
    created = sdk(dead, dead.key(project="p")).responses.create(
        model=MODEL, background=True, max_output_tokens=40,
        input="think hard [[fake:background_hold]]")
    [[key, reserved, *_]] = entry(dead, created.id).record["ticket"]["charges"]
    _kill(dead)
    clock.advance(120)
    assert fake.fake.finish_background(created.id)
    alive = make_gateway(config, clock=clock)
    [row] = Written(alive).wait(1)
    assert row.id == entry(alive, created.id).rid
    record = billed(fake, created.id)
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens,
                                                     record.output_tokens)
    assert "charged_at_estimate" not in row.flags and not row.estimated
    assert row.cost_nano == cost(record)
    # Crash recovery charged the reservation at its estimate; the late settle moves the
    # counters from it to what the row says, without counting both.
    assert reserved > row.cost_nano
    assert settled_counter(alive, key, row.cost_nano) == row.cost_nano
    assert len(alive.rows()) == 1


def _kill(gateway: Gateway) -> None:
    """Stop renewing anything, as a process that died would (its server keeps running)."""
    async def stop() -> None:
        for task in gateway.runtime._tasks:
            if task.get_name() in ("tokenstile-leases", "tokenstile-background-responses"):
                task.cancel()
        await asyncio.sleep(0)

    gateway.run(stop())


def test_crash_recovery_charges_a_background_request_nobody_follows(
        make_gateway: Any, fake: FakeHandle) -> None:
    """A gateway that dies before the upstream's answer leaves no entry: its reservation is
    charged at its estimate, like any other."""
    gateway = make_gateway({"limits": DAILY_USD})
    row = LedgerRow(id="req_lost", ts=1.0, outcome="unsettled", estimated=True, cost_nano=5,
                    flags=["charged_at_estimate"], detail={"background": True})
    written = Written(gateway)
    gateway.run(_call(gateway.runtime.charge_expired, row))
    [got] = written.wait(1)
    assert got.id == "req_lost" and got.cost_nano == 5


async def _call(fn: Any, *args: Any) -> None:
    fn(*args)
    await asyncio.sleep(0.05)


def test_a_response_the_upstream_forgot_is_charged_at_its_estimate(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": FAST, "limits": DAILY_USD})
    written = Written(gateway)
    created = sdk(gateway, gateway.key(project="p")).responses.create(
        model=MODEL, background=True, max_output_tokens=40, input="x [[fake:background_hold]]")
    estimate = entry(gateway, created.id).record["estimate"]
    assert fake.fake.responses.delete(created.id)
    [row] = written.wait(1)
    assert "charged_at_estimate" in row.flags and row.estimated
    assert row.output_tokens == 40 == estimate["output_tokens"]
    assert row.cost_nano == estimate["cost_nano"]
    assert row.detail["background"]["settled_by"] == "not_found"


def test_a_streamed_background_response_left_early_is_billed_in_full(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": FAST})
    written = Written(gateway)
    api = sdk(gateway, gateway.key(project="p"))
    response_id = None
    with api.responses.create(model=MODEL, background=True, stream=True, max_output_tokens=60,
                              input="tell me [[fake:output_tokens=50,chunk_delay_ms=20]]"
                              ) as stream:
        for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta":
                break  # the client leaves; the upstream goes on generating
    assert response_id is not None
    [row] = written.wait(1)
    record = billed(fake, response_id)
    assert record.output_tokens == 50
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens, 50)
    assert row.streamed and not row.estimated
    assert row.detail["background"]["settled_by"] == "poller"


def test_a_streamed_background_response_read_to_the_end_is_billed_from_its_stream(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": SLOW})
    api = sdk(gateway, gateway.key(project="p"))
    events = list(api.responses.create(model=MODEL, background=True, stream=True,
                                       max_output_tokens=20, input="a short one"))
    final = events[-1]
    assert final.type == "response.completed"
    [row] = gateway.rows()
    assert row.output_tokens == billed(fake, final.response.id).output_tokens == 12
    assert "background" not in row.detail or row.detail["background"] is True
    assert api.responses.retrieve(final.response.id).status == "completed"
    assert gateway.runtime.background.pending == 0


def test_a_background_response_streamed_again_is_settled_from_its_stream(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": SLOW})
    written = Written(gateway)
    api = sdk(gateway, gateway.key(project="p"))
    created = api.responses.create(model=MODEL, background=True, max_output_tokens=40,
                                   input="resume me [[fake:background_hold]]")
    events = list(api.responses.retrieve(created.id, stream=True, starting_after=2))
    assert events and all(event.sequence_number > 2 for event in events)
    final = events[-1]
    assert final.type == "response.completed" and final.response.usage is not None
    [row] = written.wait(1)
    assert row.output_tokens == final.response.usage.output_tokens == 12
    assert row.output_tokens == billed(fake, created.id).output_tokens
    assert row.detail["background"]["settled_by"] == "client"
    assert api.responses.retrieve(created.id).status == "completed"
    assert len(gateway.rows()) == 1


def test_the_upstream_key_never_leaves_the_gateway(make_gateway: Any,
                                                   fake: FakeHandle) -> None:
    gateway = make_gateway({"background_responses": SLOW})
    api = sdk(gateway, gateway.key(project="p"))
    created = api.responses.create(model=MODEL, background=True, input="hi",
                                   max_output_tokens=5)
    raw = api.responses.with_raw_response.retrieve(created.id)
    text = raw.http_response.text
    assert UPSTREAM_KEY not in text and UPSTREAM_KEY not in str(raw.headers)
    record = fake.fake.tally.last
    assert record is not None and record.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
