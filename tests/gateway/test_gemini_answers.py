"""Answers the gateway gives itself on Gemini routes, with the ``google-genai`` SDK: a
policy's auto-reply, whole and streamed, in Gemini's shape and at no cost."""

from __future__ import annotations

from typing import Any

from google.genai import types

from tests.conftest import FakeHandle
from tests.gateway.genai_clients import FLASH, client, gemini_upstream

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
