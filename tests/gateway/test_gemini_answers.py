"""Answers the gateway gives itself on Gemini routes, with the ``google-genai`` SDK: a
policy's auto-reply, and a cached answer (stored whole from a whole or streamed answer,
replayed whole or as Gemini's stream), in Gemini's shape and at no cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.genai import errors, types

from tests.conftest import FakeHandle
from tests.gateway.genai_clients import FLASH, client, gemini_upstream
from tokenstile.testing.fake_upstream import reply_text

REPLIES = {"auto_replies": [{"match": "ping", "reply": "pong"},
                            {"pattern": "what are your hours*", "reply": "Always open.",
                             "apis": ["generate_content"]},
                            {"match": "chat only", "reply": "no", "apis": ["chat"]}]}


def test_auto_replies_whole_and_streamed_in_geminis_shape(make_gateway: Any,
                                                          google: FakeHandle) -> None:
    gateway = make_gateway({**gemini_upstream(google), "policies": REPLIES})
    api = client(gateway, gateway.key()).models
    reply = api.generate_content(model=FLASH, contents="  PING ")
    assert reply.text == "pong"
    assert reply.candidates and reply.candidates[0].finish_reason == types.FinishReason.STOP
    assert reply.usage_metadata is not None and reply.usage_metadata.total_token_count == 0
    chunks = list(api.generate_content_stream(
        model=FLASH, contents=[types.Content(role="user", parts=[
            types.Part(text="What are your hours")]), types.Content(role="model", parts=[
                types.Part(text="Which day?")]), types.Content(parts=[
                    types.Part(text="what are your hours on Sunday?")])]))
    assert "".join(c.text or "" for c in chunks) == "Always open."
    assert google.fake.tally.requests == 0
    api.generate_content(model=FLASH, contents="chat only")  # a rule for chat alone
    assert google.fake.tally.requests == 1
    rows = gateway.rows()
    assert [(r.outcome, r.status, r.cost_nano, r.output_tokens, r.streamed)
            for r in rows[:2]] == [("auto_reply", 200, 0, 0, False),
                                   ("auto_reply", 200, 0, 0, True)]
    assert rows[0].flags == ["auto_replies:answered"] and rows[2].outcome == "ok"


# --- the response cache -------------------------------------------------------------------

def cached(make_gateway: Any, google: FakeHandle, tmp_path: Path) -> Any:
    return make_gateway({**gemini_upstream(google),
                         "cache": {"store": f"sqlite:///{tmp_path}/cache.db"}})


def test_a_repeated_request_is_a_free_hit_whole_or_streamed(
        make_gateway: Any, google: FakeHandle, tmp_path: Path) -> None:
    gateway = cached(make_gateway, google, tmp_path)
    api = client(gateway, gateway.key()).models
    config = types.GenerateContentConfig(system_instruction="Be brief.")
    first = api.generate_content(model=FLASH, contents="hello cache", config=config)
    second = api.generate_content(model=FLASH, contents="hello cache", config=config)
    assert second.text == first.text == reply_text(12)
    assert second.usage_metadata == first.usage_metadata
    chunks = list(api.generate_content_stream(model=FLASH, contents="hello cache",
                                              config=config))
    assert len(chunks) > 1 and "".join(c.text or "" for c in chunks) == first.text
    assert chunks[-1].usage_metadata == first.usage_metadata
    assert chunks[-1].candidates and \
        chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert google.fake.tally.requests == 1
    miss, hit, streamed = gateway.rows()
    assert (miss.cache, hit.cache, streamed.cache) == ("miss", "hit", "hit")
    assert hit.cost_nano == 0 and hit.saved_nano == miss.cost_nano > 0
    assert streamed.streamed and streamed.saved_nano == miss.cost_nano
    # Another model is another question.
    api.generate_content(model="gemini-2.0-flash", contents="hello cache", config=config)
    assert google.fake.tally.requests == 2


WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="weather", description="The weather in a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}})])


def test_a_streamed_answer_is_stored_whole_and_function_calls_survive(
        make_gateway: Any, google: FakeHandle, tmp_path: Path) -> None:
    gateway = cached(make_gateway, google, tmp_path)
    api = client(gateway, gateway.key()).models
    ask = "Weather? [[fake:tool_call=weather]]"
    config = types.GenerateContentConfig(tools=[WEATHER])
    streamed = list(api.generate_content_stream(model=FLASH, contents=ask, config=config))
    whole = api.generate_content(model=FLASH, contents=ask, config=config)
    calls = [(c.name, c.args) for c in whole.function_calls or ()]
    assert calls == [(c.name, c.args) for s in streamed for c in s.function_calls or ()]
    assert calls and calls[0][0] == "weather"
    text = list(api.generate_content_stream(model=FLASH, contents="stream me first"))
    again = api.generate_content(model=FLASH, contents="stream me first")
    assert again.text == "".join(c.text or "" for c in text) == reply_text(12)
    assert again.usage_metadata is not None and text[-1].usage_metadata is not None
    assert again.usage_metadata.candidates_token_count == \
        text[-1].usage_metadata.candidates_token_count
    assert google.fake.tally.requests == 2
    assert [r.cache for r in gateway.rows_once_written(4)] == ["miss", "hit", "miss", "hit"]


def test_google_search_and_broken_streams_are_not_cached(
        make_gateway: Any, google: FakeHandle, tmp_path: Path) -> None:
    gateway = cached(make_gateway, google, tmp_path)
    api = client(gateway, gateway.key()).models
    search = types.GenerateContentConfig(tools=[types.Tool(google_search=types.GoogleSearch())])
    for _ in range(2):
        api.generate_content(model=FLASH, contents="What happened today?", config=search)
    assert google.fake.tally.requests == 2
    for _ in range(2):
        with pytest.raises(errors.ServerError):
            for _ in api.generate_content_stream(model=FLASH,
                                                 contents="go on [[fake:error_after=3]]"):
                pass
    assert google.fake.tally.requests == 4
    assert [r.cache for r in gateway.rows_once_written(4)] == ["skip", "skip", "miss", "miss"]
