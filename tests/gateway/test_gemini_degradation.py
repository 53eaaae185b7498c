"""Degradation on Gemini routes with the ``google-genai`` SDK: an over-long ``contents`` is
trimmed to a feature's input budget (the system instruction kept, function calls with their
responses, the oldest turns first, starting on a user turn), and a threshold's downgrade
sends the call to the cheaper model's URL, the ledger naming both models."""

from __future__ import annotations

from typing import Any

from google.genai import types

from tests.conftest import FakeHandle
from tests.gateway.genai_clients import FLASH, PRO, client, gemini_upstream
from tests.gateway.test_gemini_sdk import google_price

SYSTEM = "You are a patient assistant " + "who explains " * 20


def trimming(make_gateway: Any, google: FakeHandle, budget: int) -> Any:
    return make_gateway({**gemini_upstream(google), "features": {
        "chat": {"max_input": budget, "over_budget": "trim"}}})


def turn(role: str, text: str) -> types.Content:
    return types.Content(role=role, parts=[types.Part(text=text)])


def test_an_over_long_conversation_is_trimmed_user_first_keeping_the_system_instruction(
        make_gateway: Any, google: FakeHandle) -> None:
    gateway = trimming(make_gateway, google, 200)
    sent: list[types.Content] = []
    for i in range(6):  # long questions, short answers: what fits begins with an answer
        sent += [turn("user", f"question {i} " + "words " * 30), turn("model", f"answer {i}")]
    sent.append(turn("user", "and now?"))
    client(gateway, gateway.key(feature="chat")).models.generate_content(
        model=FLASH, contents=sent, config=types.GenerateContentConfig(
            system_instruction=SYSTEM, max_output_tokens=10))
    record = google.fake.tally.last
    assert record is not None and record.status == 200
    forwarded = record.body["contents"]
    assert 0 < len(forwarded) < len(sent)
    assert forwarded[0]["role"] == "user" and forwarded[-1]["parts"] == [{"text": "and now?"}]
    assert forwarded == [c.model_dump(exclude_none=True) for c in sent[-len(forwarded):]]
    assert record.body["systemInstruction"]["parts"] == [{"text": SYSTEM}]
    [row] = gateway.rows()
    assert "trimmed" in row.degraded and row.input_tokens == record.input_tokens
    assert row.cost_nano == google_price(FLASH, record)


WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="weather", description="The weather in a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}})])


def test_function_calls_stay_with_their_responses(make_gateway: Any,
                                                  google: FakeHandle) -> None:
    gateway = trimming(make_gateway, google, 260)
    sent = [turn("user", "old " + "words " * 80), turn("model", "ok")]
    for i in range(3):  # each question, its function call and the call's response
        sent += [
            turn("user", f"question {i} " + "words " * 20),
            types.Content(role="model", parts=[types.Part.from_function_call(
                name="weather", args={"city": f"city {i}"})]),
            types.Content(role="user", parts=[types.Part.from_function_response(
                name="weather", response={"forecast": "rain " * 12})]),
            turn("model", f"answer {i}")]
    sent.append(turn("user", "and tomorrow?"))
    client(gateway, gateway.key(feature="chat")).models.generate_content(
        model=FLASH, contents=sent, config=types.GenerateContentConfig(
            tools=[WEATHER], max_output_tokens=10))
    record = google.fake.tally.last
    assert record is not None and record.status == 200
    forwarded = record.body["contents"]
    assert 0 < len(forwarded) < len(sent) and forwarded[-1]["parts"] == [
        {"text": "and tomorrow?"}]
    assert forwarded[0]["role"] == "user" and "text" in forwarded[0]["parts"][0]
    for i, content in enumerate(forwarded):
        if "functionCall" in content["parts"][0]:  # its response follows it, kept
            assert "functionResponse" in forwarded[i + 1]["parts"][0]
        if "functionResponse" in content["parts"][0]:
            assert i > 0 and "functionCall" in forwarded[i - 1]["parts"][0]
    [row] = gateway.rows()
    assert "trimmed" in row.degraded


def test_a_conversation_within_its_budget_is_left_alone(make_gateway: Any,
                                                       google: FakeHandle) -> None:
    gateway = trimming(make_gateway, google, 5000)
    sent = [turn("user", "hi"), turn("model", "hello"), turn("user", "how are you?")]
    client(gateway, gateway.key(feature="chat")).models.generate_content(
        model=FLASH, contents=sent)
    record = google.fake.tally.last
    assert record is not None and len(record.body["contents"]) == 3
    [row] = gateway.rows()
    assert "trimmed" not in row.degraded


def test_a_budget_past_its_threshold_switches_to_a_cheaper_gemini_model(
        make_gateway: Any, google: FakeHandle) -> None:
    gateway = make_gateway({**gemini_upstream(google), "limits": [
        {"name": "daily", "scope": "project", "window": "day", "unit": "tokens",
         "amount": 100_000, "thresholds": [
             {"threshold": 0.0001, "action": "downgrade", "downgrade_to": FLASH},
             {"threshold": 1.0, "action": "block"}]}]})
    api = client(gateway, gateway.key()).models
    config = types.GenerateContentConfig(max_output_tokens=8, thinking_config=types.ThinkingConfig(
        thinking_budget=200))
    api.generate_content(model=PRO, contents="hi", config=config)
    streamed = list(api.generate_content_stream(model=PRO, contents="again", config=config))
    assert streamed
    records = google.fake.tally.records
    assert [r.route for r in records] == [f"/v1beta/models/{PRO}:generateContent",
                                          f"/v1beta/models/{FLASH}:streamGenerateContent"]
    assert "model" not in records[1].body
    rows = gateway.rows()
    assert [(r.requested_model, r.served_model) for r in rows] == [(PRO, PRO), (PRO, FLASH)]
    assert "downgraded" in rows[1].degraded
    assert rows[1].cost_nano == google_price(FLASH, records[1])


def test_a_thinking_budget_is_fitted_to_the_cheaper_model(make_gateway: Any,
                                                         google: FakeHandle) -> None:
    """2.5 Pro thinks up to 32,768 tokens, 2.5 Flash up to 24,576: Google refuses more."""
    gateway = make_gateway({**gemini_upstream(google), "limits": [
        {"name": "daily", "scope": "project", "window": "day", "unit": "tokens",
         "amount": 10_000_000, "thresholds": [
             {"threshold": 0.0000001, "action": "downgrade", "downgrade_to": FLASH}]}]})
    api = client(gateway, gateway.key()).models
    config = types.GenerateContentConfig(max_output_tokens=8, thinking_config=types.ThinkingConfig(
        thinking_budget=30_000))
    api.generate_content(model=PRO, contents="hi", config=config)
    api.generate_content(model=PRO, contents="again", config=config)
    records = google.fake.tally.records
    assert [r.body["generationConfig"]["thinkingConfig"] for r in records] == [
        {"thinking_budget": 30_000}, {"thinking_budget": 24_576}]
    assert [r.status for r in records] == [200, 200]
    assert [r.served_model for r in gateway.rows_once_written(2)] == [PRO, FLASH]
