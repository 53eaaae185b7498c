"""An upstream that times out before its answer's headers may still have generated, and
billed, that answer: each such attempt leaves a ledger row charged at its estimate, it is
not retried unless ``resilience.retry_timeouts`` says so, and a retry goes only when every
hard limit has room for its worst case as well."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle, Gateway
from tokenstile.types import LedgerRow

HUNG = "[[fake:hang,bill_if_gone]]"  # never answers, and bills the answer it generated
PROMPT = [{"role": "user", "content": "Answer me."}]


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def resilience(**extra: Any) -> dict[str, Any]:
    return {"resilience": {"first_byte_timeout_s": 0.3, "backoff_s": 0, **extra}}


def assert_charged_at_estimate(row: LedgerRow, billed_output: int) -> None:
    assert row.status == 504 and row.block_reason == "upstream_timeout"
    assert row.estimated and "charged_at_estimate" in row.flags
    assert row.output_tokens == 50 >= billed_output  # the output cap: never below the bill
    assert row.cost_nano > 0


def test_a_timed_out_answer_is_charged_at_its_estimate(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway(resilience())
    fake.fake.script([HUNG])
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gateway, gateway.key()).chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=50)
    assert caught.value.status_code == 504
    assert fake.fake.tally.wait_for(lambda t: t.requests == 1)
    record = fake.fake.tally.last
    assert record is not None and record.output_tokens == 12  # what the provider billed
    [row] = gateway.rows_once_written(1)
    assert_charged_at_estimate(row, record.output_tokens)
    assert row.input_tokens == record.input_tokens


def test_timed_out_generations_are_not_retried_by_default(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway(resilience(retries=2))
    fake.fake.script([HUNG, HUNG, None])
    with pytest.raises(openai.InternalServerError):
        sdk(gateway, gateway.key()).chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=50)
    [row] = gateway.rows_once_written(1)
    assert_charged_at_estimate(row, 12)
    assert row.detail["retry_refused"] == "resilience.retry_timeouts is off"
    assert fake.fake.tally.requests == 1  # one generation billed upstream, one row


def test_each_billed_attempt_has_a_row_when_timeouts_are_retried(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({**resilience(retries=2, retry_timeouts=True), "limits": [
        {"name": "daily", "scope": "project", "window": "day", "unit": "tokens",
         "amount": 100_000}]})
    fake.fake.script([HUNG, HUNG, None])
    reply = sdk(gateway, gateway.key(project="p")).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=50)
    assert reply.choices[0].message.content
    assert fake.fake.tally.wait_for(lambda t: t.requests == 3)
    billed = [r.output_tokens for r in fake.fake.tally.records]
    assert billed == [12, 12, 12]  # three generations the provider billed
    answered, first, second = sorted(gateway.rows_once_written(3), key=lambda r: r.id)
    for n, row in ((1, first), (2, second)):
        assert row.id == f"{answered.id}-{n}" and row.detail["attempt_of"] == answered.id
        assert_charged_at_estimate(row, 12)
    assert not answered.estimated and answered.output_tokens == 12
    assert [a["error"] for a in answered.detail["attempts"]] == \
        ["upstream_timeout", "upstream_timeout", None]
    # The counters hold what the three rows say, and no reservation is left.
    runtime = gateway.runtime
    counted = gateway.settled_counter("daily", "p")
    assert counted == sum(r.input_tokens + r.output_tokens for r in (answered, first, second))
    assert gateway.run(runtime.counters.claim_expired(runtime.clock.now() + 10**6)) == []


@pytest.mark.parametrize("limit", [
    {"name": "tight", "scope": "project", "window": "day", "unit": "tokens", "amount": 100},
    {"name": "tight", "scope": "project", "window": "request", "unit": "tokens",
     "amount": 100},
])
def test_a_retry_needs_room_for_another_worst_case(
        make_gateway: Any, fake: FakeHandle, limit: dict[str, Any]) -> None:
    gateway = make_gateway({**resilience(retries=2, retry_timeouts=True), "limits": [limit]})
    fake.fake.script([HUNG, None])
    with pytest.raises(openai.InternalServerError):
        sdk(gateway, gateway.key(project="p")).chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=50)  # a worst case of 61
    [row] = gateway.rows_once_written(1)
    assert_charged_at_estimate(row, 12)
    assert row.input_tokens + row.output_tokens <= 100
    assert "tight" in row.detail["retry_refused"] or "p:tokens" in row.detail["retry_refused"]
    assert fake.fake.tally.requests == 1
