"""Input the gateway cannot see before the call (``previous_response_id``, files and documents
by reference) is reserved at a worst case, and what it can see (structured-output schemas,
images) is counted: a hard limit is never passed by an undercount."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway
from tokenstile.prices import Pricer
from tokenstile.testing.fake_upstream import reply_text
from tokenstile.types import usd_to_nano

DAILY_USD = [{"name": "daily-usd", "scope": "project", "window": "day", "unit": "usd",
              "amount": 1.00}]


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


async def test_ten_previous_response_id_calls_never_pass_a_daily_usd_limit(
        make_gateway: Any, fake: FakeHandle) -> None:
    """The measured case: ten calls continuing one conversation by ``previous_response_id``
    each pay its 83,000 tokens of history as input, while each request shows a few words."""
    gateway = make_gateway({"limits": DAILY_USD})
    history = reply_text(83_000)
    async with aclient(gateway, gateway.key(project="research")) as research:
        base = await research.responses.create(model="gpt-4o", input=history,
                                               max_output_tokens=16)
    api = aclient(gateway, gateway.key(project="p"))

    async def follow_up(turn: int) -> str | None:
        try:
            await api.responses.create(model="gpt-4o", input=f"and then? {turn}",
                                       previous_response_id=base.id, max_output_tokens=16)
        except openai.RateLimitError as exc:
            return exc.message
        return None

    async with api:
        refusals = await asyncio.gather(*(follow_up(turn) for turn in range(10)))
    rows = [row for row in await asyncio.to_thread(gateway.rows) if row.project == "p"]
    spent = sum(row.cost_nano for row in rows)
    calls = [r for r in fake.fake.tally.records if r.body.get("previous_response_id")]
    assert _priced(calls) == spent  # the ledger holds what the upstream billed
    assert spent <= usd_to_nano(1.00)
    refused = [message for message in refusals if message is not None]
    assert len(refused) == 10 - len(calls) > 0
    assert "hidden_input.max_tokens for 'gpt-4o'" in refused[0]
    assert "previous_response_id cannot be counted" in refused[0]
    assert all("input_worst_case" in row.flags for row in rows if row.outcome == "ok")
    assert rows[0].detail["hidden_input"]["reserved_input_tokens"] == 128_000


def test_a_previous_response_id_chain_never_passes_a_daily_usd_limit(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"limits": DAILY_USD})
    api = sdk(gateway, gateway.key(project="p"))
    previous = api.responses.create(model="gpt-4o", input=reply_text(83_000),
                                    max_output_tokens=16).id
    answered = 1
    for turn in range(10):
        try:
            previous = api.responses.create(model="gpt-4o", input=f"and then? {turn}",
                                            previous_response_id=previous,
                                            max_output_tokens=16).id
        except openai.RateLimitError:
            continue
        answered += 1
    spent = sum(row.cost_nano for row in gateway.rows())
    assert _priced(fake.fake.tally.records) == spent
    assert spent <= usd_to_nano(1.00)
    assert 1 < answered < 11


def aclient(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def _priced(records: list[Any]) -> int:
    pricer = Pricer()
    return sum(pricer.cost_nano("gpt-4o", _usage(r)) or 0 for r in records)


def _usage(record: Any) -> Any:
    from tokenstile.types import Usage

    return Usage(input_tokens=record.input_tokens, output_tokens=record.output_tokens,
                 cached_input_tokens=record.cached_tokens)


def test_a_hidden_input_bound_lets_the_chain_go_on_and_is_settled_to_usage(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"limits": DAILY_USD,
                            "hidden_input": {"max_tokens": {"gpt-4o*": 2_000}}})
    api = sdk(gateway, gateway.key(project="p"))
    first = api.responses.create(model="gpt-4o", input="hello there", max_output_tokens=8)
    second = api.responses.create(model="gpt-4o", input="and then?", max_output_tokens=8,
                                  previous_response_id=first.id)
    assert second.usage is not None
    [_, row] = gateway.rows()
    assert row.input_tokens == second.usage.input_tokens  # settled to what was billed
    hidden = row.detail["hidden_input"]
    assert hidden["sources"] == ["previous_response_id"]
    assert hidden["basis"] == "hidden_input.max_tokens['gpt-4o*'] = 2,000"
    assert hidden["reserved_input_tokens"] > 2_000
    assert "input_worst_case" in row.flags


def test_a_worst_case_that_cannot_fit_a_hard_limit_is_refused_naming_the_setting(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"limits": [{"scope": "project", "window": "request",
                                        "unit": "usd", "amount": 0.05}]})
    api = sdk(gateway, gateway.key(project="p"))
    first = api.responses.create(model="gpt-4o", input="hello", max_output_tokens=8)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        api.responses.create(model="gpt-4o", input="more", max_output_tokens=8,
                             previous_response_id=first.id)
    assert caught.value.code == "hidden_input_exceeds_limit"
    message = caught.value.message
    # 128,000 input tokens at the priority tier (no service_tier asked: the priciest tier)
    assert "tokenstile: this request needs up to $0.54 USD" in message
    assert "the context window of gpt-4o, 128,000 tokens" in message
    assert "set hidden_input.max_tokens for 'gpt-4o'" in message
    assert len(fake.fake.tally.records) == 1  # never forwarded


def test_a_window_limit_smaller_than_the_worst_case_refuses_at_once(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"limits": [{"scope": "project", "window": "day", "unit": "tokens",
                                        "amount": 50_000}]})
    api = sdk(gateway, gateway.key(project="p"))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        api.responses.create(model="gpt-4o", input="summarize", max_output_tokens=8,
                             conversation="conv_123")
    assert "allows 50,000 tokens a day" in caught.value.message
    assert "conversation cannot be counted" in caught.value.message
    assert fake.fake.tally.records == []


def test_the_long_context_price_cliff_is_part_of_the_worst_case(
        make_gateway: Any, fake: FakeHandle) -> None:
    """gpt-5.4 reads about a million tokens, and a request with more than 272k pays the
    long-context price for every token: hidden input is reserved at that price."""
    gateway = make_gateway({"limits": [{"scope": "project", "window": "day", "unit": "usd",
                                        "amount": 4.00}]})
    api = sdk(gateway, gateway.key(project="p"))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        api.responses.create(model="gpt-5.4", input="go on", max_output_tokens=100,
                             previous_response_id="resp_earlier")
    pricer = Pricer()
    price, window = pricer.price_for("gpt-5.4"), pricer.context_window("gpt-5.4")
    assert price is not None and window is not None
    tier = price.at(window)
    assert tier is not price and tier.input > price.input  # the cliff applies
    worst = price.estimate_nano(window, 100)
    assert worst > price.input * window * 1000  # more than at the base price
    assert f"needs up to ${worst / 1e9:,.2f} USD" in caught.value.message
    assert fake.fake.tally.records == []


def test_documents_by_url_are_hidden_input_for_claude(make_gateway: Any,
                                                      fake: FakeHandle) -> None:
    gateway = make_gateway({
        "upstreams": {"anthropic": {"kind": "anthropic", "base_url": fake.url,
                                    "api_key": UPSTREAM_KEY}},
        "routes": [{"match": "claude*", "upstream": "anthropic"}],
        "limits": [{"scope": "project", "window": "request", "unit": "tokens",
                    "amount": 100_000}]})
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key(project="p"),
                                 max_retries=0)
    document = {"type": "document", "source": {"type": "url",
                                               "url": "https://example.com/report.pdf"}}
    with pytest.raises(anthropic.UnprocessableEntityError) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[
            {"role": "user", "content": [document, {"type": "text", "text": "Summarize."}]}])
    assert "the context window of claude-sonnet-4-5, 200,000 tokens" in caught.value.message
    assert "a document given by URL or file id" in caught.value.message
    assert fake.fake.tally.records == []


def test_structured_output_schemas_are_counted_before_the_call(
        make_gateway: Any, fake: FakeHandle) -> None:
    """A large ``text.format`` / ``response_format`` schema is input: a request whose schema
    alone passes a per-request limit is refused, not forwarded and billed past it."""
    gateway = make_gateway({"limits": [{"scope": "project", "window": "request",
                                        "unit": "tokens", "amount": 1_500}]})
    api = sdk(gateway, gateway.key(project="p"))
    schema = {"type": "object", "additionalProperties": False,
              "required": [f"field_{i}" for i in range(120)],
              "properties": {f"field_{i}": {"type": "string",
                                            "description": f"the value number {i} of the form"}
                             for i in range(120)}}
    fmt = {"type": "json_schema", "name": "form", "schema": schema, "strict": True}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        api.responses.create(model="gpt-4o-mini", input="fill it", max_output_tokens=50,
                             text={"format": fmt})
    assert caught.value.code == "request_limit_exceeded"
    with pytest.raises(openai.UnprocessableEntityError):
        api.chat.completions.create(
            model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "form", "schema": schema}})
    assert fake.fake.tally.records == []
    # A small schema passes, and the estimate covers what the upstream bills.
    small = {"type": "json_schema", "name": "form", "strict": True,
             "schema": {"type": "object", "properties": {"a": {"type": "string"}},
                        "required": ["a"], "additionalProperties": False}}
    reply = api.responses.create(model="gpt-4o-mini", input="fill it", max_output_tokens=20,
                                 text={"format": small})
    assert reply.usage is not None
    estimate = gateway.runtime.adapters["openai"]
    parsed = estimate.parse("responses", {"model": "gpt-4o-mini", "input": "fill it",
                                          "text": {"format": small}})
    assert abs(estimate.count_input(parsed) - reply.usage.input_tokens) <= 5


def test_images_by_url_reserve_their_largest_size(make_gateway: Any,
                                                  fake: FakeHandle) -> None:
    gateway = make_gateway({"limits": [{"scope": "project", "window": "request",
                                        "unit": "input_tokens", "amount": 3_000}]})
    api = sdk(gateway, gateway.key(project="p"))
    url = "https://example.com/page.png"
    content: list[Any] = [{"type": "input_text", "text": "compare"}] + \
        [{"type": "input_image", "image_url": url, "detail": "high"} for _ in range(3)]
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        api.responses.create(model="gpt-4o", max_output_tokens=10,
                             input=[{"role": "user", "content": content}])
    # 3 images of unknown size: 3 x 1,445 (at most 2 x 4 tiles each), not 3 x 765.
    assert "this request has 4,3" in caught.value.message
    assert fake.fake.tally.records == []
