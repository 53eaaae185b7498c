"""Output caps on Gemini routes with the ``google-genai`` SDK: the max_tokens policy reads a
cap in either spelling (``maxOutputTokens`` / ``max_output_tokens``, ``thinking_budget``),
clamping rewrites the field the client used and leaves no second cap, and a clamp never
writes a thinking budget Google refuses (the fake refuses as Google does)."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import pytest
from google.genai import errors, types

from tests.conftest import FakeHandle, Gateway
from tests.gateway.genai_clients import FLASH, PRO, client, gemini_upstream

LITE = "gemini-2.5-flash-lite"


def policy(make_gateway: Any, fake: FakeHandle, limit: int, mode: str) -> Gateway:
    gateway: Gateway = make_gateway({**gemini_upstream(fake), "policies": {
        "max_tokens": {"limit": limit, "mode": mode}}})
    return gateway


def thinking(budget: int | None = None,
             snake_cap: int | None = None) -> types.GenerateContentConfig:
    """A thinking budget (the SDK sends it as ``thinking_budget``) and a cap sent as Google's
    proto name, ``max_output_tokens`` (the SDK's own config cap goes as
    ``maxOutputTokens``)."""
    extra = None if snake_cap is None else types.HttpOptions(
        extra_body={"generationConfig": {"max_output_tokens": snake_cap}})
    return types.GenerateContentConfig(
        thinking_config=None if budget is None else types.ThinkingConfig(
            thinking_budget=budget), http_options=extra)


def test_block_mode_reads_snake_case_caps_and_counts_thinking(
        make_gateway: Any, google: FakeHandle) -> None:
    gateway = policy(make_gateway, google, 1000, "block")
    key = gateway.key()
    # 600 + 300 of thinking: within 1,000, sent as the client wrote it.
    client(gateway, key).models.generate_content(model=FLASH, contents="hi",
                                                 config=thinking(300, 600))
    record = google.fake.tally.last
    assert record is not None
    assert record.body["generationConfig"] == {"max_output_tokens": 600,
                                               "thinkingConfig": {"thinking_budget": 300}}
    with pytest.raises(errors.ClientError) as over:
        client(gateway, key).models.generate_content(
            model=FLASH, contents="hi", config=thinking(300, 900))
    assert over.value.code == 422
    assert "generationConfig.max_output_tokens 900 plus up to 300 tokens of thinking " \
        "(set thinkingConfig.thinkingBudget to think less) exceeds the limit of 1000" in (
            over.value.message or "")
    # Thinking left to the model may take 24,576 tokens: over, though the answer fits.
    with pytest.raises(errors.ClientError) as dynamic:
        client(gateway, key).models.generate_content(model=FLASH, contents="hi",
                                                     config=thinking(snake_cap=600))
    assert "plus up to 24576 tokens of thinking" in (dynamic.value.message or "")
    with pytest.raises(errors.ClientError) as missing:
        client(gateway, key).models.generate_content(model=FLASH, contents="hi")
    assert "generationConfig.maxOutputTokens is required" in (missing.value.message or "")
    raw = httpx.post(f"{gateway.url}/v1beta/models/gemini-2.0-flash:generateContent",
                     headers={"x-goog-api-key": key}, timeout=10, json={
                         "contents": [{"parts": [{"text": "hi"}]}],
                         "generation_config": {"max_output_tokens": 800}})
    assert raw.status_code == 200, raw.text
    assert google.fake.tally.requests == 2


def test_clamp_mode_rewrites_the_field_the_client_used(make_gateway: Any,
                                                       google: FakeHandle) -> None:
    gateway = policy(make_gateway, google, 1000, "clamp")
    key = gateway.key()
    api = client(gateway, key).models
    api.generate_content(model=FLASH, contents="hi", config=thinking(300, 5000))
    api.generate_content(model=FLASH, contents="hi", config=thinking(3000, 200))
    api.generate_content(model=FLASH, contents="hi", config=thinking(100, 400))
    raw = httpx.post(f"{gateway.url}/v1beta/models/gemini-2.0-flash:generateContent",
                     headers={"x-goog-api-key": key}, timeout=10, json={
                         "contents": [{"parts": [{"text": "hi"}]}],
                         "generation_config": {"max_output_tokens": 5000,
                                               "maxOutputTokens": 4000}})
    assert raw.status_code == 200, raw.text
    sent = [r.body for r in google.fake.tally.records]
    assert [b.get("generationConfig") for b in sent[:3]] == [
        {"max_output_tokens": 700, "thinkingConfig": {"thinking_budget": 300}},
        # The client's 200 kept; thinking gets the rest of the 1,000.
        {"max_output_tokens": 200, "thinkingConfig": {"thinking_budget": 800}},
        {"max_output_tokens": 400, "thinkingConfig": {"thinking_budget": 100}},  # fits
    ]
    # One cap, under the spelling the client's object used: no second, looser one.
    assert sent[3]["generation_config"] == {"maxOutputTokens": 1000}
    assert "generationConfig" not in sent[3]
    clamped = ["max_tokens:clamped"]
    assert [r.flags for r in gateway.rows_once_written(4)] == [clamped, clamped, [], clamped]


def test_a_clamp_below_twice_the_least_thinking_writes_a_budget_google_takes(
        make_gateway: Any, google: FakeHandle) -> None:
    """2.5 Pro thinks at least 128 tokens and cannot stop; Flash-Lite at least 512, and
    can stop. Halving a cap under 256 (or 1,024) would write a budget Google refuses."""
    gateway = policy(make_gateway, google, 200, "clamp")
    api = client(gateway, gateway.key()).models
    api.generate_content(model=PRO, contents="hi", config=types.GenerateContentConfig(
        max_output_tokens=1000))
    api.generate_content(model=LITE, contents="hi", config=types.GenerateContentConfig(
        max_output_tokens=1000))
    sent = [r.body["generationConfig"] for r in google.fake.tally.records]
    assert sent == [{"maxOutputTokens": 72, "thinkingConfig": {"thinkingBudget": 128}},
                    {"maxOutputTokens": 200, "thinkingConfig": {"thinkingBudget": 0}}]
    assert all(r.status == 200 for r in gateway.rows())


def test_a_cap_too_small_for_a_model_that_must_think_is_refused_in_googles_shape(
        make_gateway: Any, google: FakeHandle) -> None:
    gateway = policy(make_gateway, google, 100, "clamp")
    with pytest.raises(errors.ClientError) as refused:
        client(gateway, gateway.key()).models.generate_content(
            model=PRO, contents="hi", config=types.GenerateContentConfig(
                max_output_tokens=1000))
    assert (refused.value.code, refused.value.status) == (422, "FAILED_PRECONDITION")
    assert "gemini-2.5-pro always thinks, at least 128 tokens" in (refused.value.message
                                                                    or "")
    assert google.fake.tally.requests == 0
    # A per-request output limit clamps through the same code.
    limited = make_gateway({**gemini_upstream(google), "limits": [
        {"name": "answer", "scope": "project", "window": "request", "unit": "output_tokens",
         "amount": 120}]})
    with pytest.raises(errors.ClientError) as small:
        client(limited, limited.key()).models.generate_content(model=PRO, contents="hi")
    assert small.value.code == 422 and "no room for an answer" in (small.value.message or "")
    assert google.fake.tally.requests == 0


def test_the_fake_refuses_the_budgets_google_refuses(gemini: Gateway,
                                                     google: FakeHandle) -> None:
    with pytest.raises(errors.ClientError) as refused:
        client(gemini, gemini.key()).models.generate_content(model=PRO, contents="hi",
                                                             config=thinking(64))
    assert refused.value.code == 400
    assert refused.value.message == "The thinking budget 64 is invalid. Please choose a " \
        "value between 128 and 32768."


def test_a_clamped_request_for_several_candidates_reserves_what_they_may_write(
        make_gateway: Any, google: FakeHandle) -> None:
    """A clamp splits the limit between the candidates (1,000 // 3 = 333 each): the
    reservation holds what the three may write, 999 tokens, not the limit's 1,000 (one
    candidate: 1,000). The refusal says how much the request needed."""
    gateway: Gateway = make_gateway({**gemini_upstream(google), "policies": {
        "max_tokens": {"limit": 1000, "mode": "clamp"}},
        "projects": {"demo": {"daily_limit": 10}}})
    key = gateway.key()

    def needed(candidates: int) -> int:
        body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {
            "maxOutputTokens": 5000, "candidateCount": candidates}}
        raw = httpx.post(f"{gateway.url}/v1beta/models/gemini-2.0-flash:generateContent",
                         headers={"x-goog-api-key": key}, timeout=10, json=body)
        assert raw.status_code == 429, raw.text
        message = raw.json()["error"]["message"]
        return int(message.split("this request needs ")[1].split(" ")[0].replace(",", ""))

    one, three = needed(1), needed(3)
    assert one - three == 1000 - 999
    assert google.fake.tally.requests == 0
