"""Moderations (free, counted) and images (per image, or per token), end to end: the
official ``openai`` SDK through the gateway to the fake upstream, each call priced on its
ledger row, and refused before it is sent when its worst case does not fit the budget."""

from __future__ import annotations

import base64
from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle
from tokenstile.types import usd_to_nano

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAA"
                       "jCB0C8AAAAASUVORK5CYII=")


def spend(amount: float) -> dict[str, Any]:
    return {"limits": [{"name": "spend", "scope": "project", "unit": "usd", "window": "day",
                        "amount": amount}]}


async def test_moderations_are_free_but_counted_against_requests(in_process: Any,
                                                                 fake: FakeHandle) -> None:
    gw = await in_process({"limits": [
        {"name": "calls", "scope": "project", "unit": "requests", "window": "day",
         "amount": 2},
        {"name": "spend", "scope": "project", "unit": "usd", "window": "day",
         "amount": 0.000001}]})
    client = gw.openai(await gw.key())
    first = await client.moderations.create(input="a kind word")
    assert first.results[0].flagged is False
    await client.moderations.create(model="omni-moderation-latest", input=["one", "two"])
    with pytest.raises(openai.RateLimitError) as refused:
        await client.moderations.create(input="a third one")
    assert "2 of its 2 daily requests" in refused.value.message
    rows = await gw.rows()
    assert [(r.api, r.outcome, r.cost_nano) for r in rows] == [
        ("moderations", "ok", 0), ("moderations", "ok", 0), ("moderations", "blocked", 0)]
    assert rows[0].served_model == "omni-moderation-latest"
    assert len(fake.fake.tally.records) == 2  # the refused one never left


async def test_dall_e_images_are_priced_per_image_by_quality_and_size(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    wide = await client.images.generate(model="dall-e-3", prompt="a lighthouse at dusk",
                                        size="1792x1024", quality="hd")
    assert wide.data and wide.data[0].url
    small = await client.images.generate(model="dall-e-2", prompt="a cat", n=3,
                                         size="512x512")
    assert len(small.data or []) == 3
    default = await client.images.generate(model="dall-e-3", prompt="a dog")
    assert default.data
    rows = await gw.rows()
    assert [r.api for r in rows] == ["images"] * 3
    assert [r.cost_nano for r in rows] == [usd_to_nano("0.12"), usd_to_nano("0.054"),
                                           usd_to_nano("0.04")]
    assert [r.detail["images"] for r in rows] == [1, 3, 1]
    assert all(not r.estimated and r.input_tokens == 0 for r in rows)
    # Priced per image, so named in the metrics (not lumped into "other")
    assert 'model="dall-e-3"' in gw.runtime.metrics.render().decode()


async def test_gpt_image_is_priced_by_the_tokens_it_reports(in_process: Any,
                                                            fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    answer = await client.images.generate(model="gpt-image-1", prompt="a red bicycle", n=2,
                                          quality="low", size="1024x1536")
    assert answer.usage is not None and answer.data and answer.data[0].b64_json
    [row] = await gw.rows()
    assert (row.input_tokens, row.output_tokens) == (answer.usage.input_tokens,
                                                     answer.usage.output_tokens)
    assert row.output_tokens == 2 * 408
    # $5/M text in, $40/M image out (genai-prices)
    assert row.cost_nano == row.input_tokens * 5_000 + row.output_tokens * 40_000
    assert fake.fake.tally.last is not None and fake.fake.tally.last.units == {"images": 2}


async def test_an_image_edit_is_a_form_with_its_images_forwarded(in_process: Any,
                                                                 fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    answer = await client.images.edit(
        model="gpt-image-1", prompt="add a hat", quality="medium", size="1024x1024",
        image=[("a.png", PNG, "image/png"), ("b.png", PNG, "image/png")])
    assert answer.usage is not None
    seen = fake.fake.tally.last
    assert seen is not None and seen.route == "/v1/images/edits"
    assert seen.body["prompt"] == "add a hat" and seen.body["model"] == "gpt-image-1"
    [row] = await gw.rows()
    image_in = answer.usage.input_tokens_details.image_tokens
    text_in = answer.usage.input_tokens_details.text_tokens
    assert image_in == 2 * 323 and row.detail["input_image_tokens"] == image_in
    assert row.api == "image_edits" and row.output_tokens == 1056
    # image input at $10/M, text at $5/M, output at $40/M
    assert row.cost_nano == image_in * 10_000 + text_in * 5_000 + 1056 * 40_000
    dalle = await client.images.edit(model="dall-e-2", prompt="brighter", size="256x256",
                                     image=("c.png", PNG, "image/png"))
    assert dalle.data
    assert (await gw.rows())[-1].cost_nano == usd_to_nano("0.016")


async def test_the_worst_case_of_the_images_asked_is_refused_before_sending(
        in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process(spend(0.10))
    client = gw.openai(await gw.key())
    with pytest.raises(openai.RateLimitError):  # one hd 1792x1024 image is $0.12
        await client.images.generate(model="dall-e-3", prompt="x", size="1792x1024",
                                     quality="hd")
    with pytest.raises(openai.RateLimitError):  # quality auto: 3 high 1024x1536 images
        await client.images.generate(model="gpt-image-1", prompt="x", n=3)
    assert not fake.fake.tally.records  # nothing was sent
    await client.images.generate(model="gpt-image-1", prompt="x", n=3, quality="low")
    rows = await gw.rows()
    assert [r.outcome for r in rows] == ["blocked", "blocked", "ok"]
    assert rows[0].block_reason == "budget:spend"


async def test_image_prompts_go_through_the_word_lists(in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process({"policies": {"wordlists": {"secret": ["forbidden"]},
                                  "request_wordlists": "secret:block"}})
    client = gw.openai(await gw.key())
    with pytest.raises(openai.UnprocessableEntityError):
        await client.images.generate(model="dall-e-2", prompt="a forbidden thing")
    assert not fake.fake.tally.records



async def test_a_per_request_output_limit_refuses_what_it_cannot_cap(in_process: Any,
                                                                    fake: FakeHandle) -> None:
    gw = await in_process({"limits": [{"name": "small", "scope": "project", "unit": "output_tokens",
                                 "window": "request", "amount": 1000}]})
    client = gw.openai(await gw.key())
    with pytest.raises(openai.UnprocessableEntityError) as refused:  # high: 4,160 tokens
        await client.images.generate(model="gpt-image-1", prompt="x", quality="high",
                                     size="1024x1024")
    assert "4,160" in refused.value.message and not fake.fake.tally.records
    await client.images.generate(model="gpt-image-1", prompt="x", quality="low",
                                 size="1024x1024")
    assert "max_tokens" not in fake.fake.tally.records[-1].body  # nothing written into it


async def test_an_image_call_that_times_out_is_charged_its_worst_case(in_process: Any) -> None:
    gw = await in_process({"resilience": {"first_byte_timeout_s": 0.2, "retries": 0}})
    client = gw.openai(await gw.key())
    with pytest.raises(openai.APIStatusError):
        await client.images.generate(model="dall-e-3", prompt="slow [[fake:delay_ms=2000]]")
    [row] = await gw.rows()
    assert row.block_reason == "upstream_timeout" and "charged_at_estimate" in row.flags
    assert row.cost_nano == usd_to_nano("0.04") and row.output_tokens == 0
    assert row.detail["images"] == 1
