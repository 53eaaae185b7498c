"""Auto-replies (no upstream call, zero cost, the endpoint's own shape) and auto-moderation
(the upstream's /v1/moderations first; the fake flags input containing "forbidden")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle
from tests.policies.conftest import MODEL, PolicyGateway, message, post_json

Make = Callable[..., PolicyGateway]
REPLIES = {"auto_replies": [{"match": "ping", "reply": "pong"},
                            {"pattern": "what are your hours*", "reply": "Always open."}]}


def test_chat_auto_reply_whole_and_streamed(policy_gateway: Make, fake: FakeHandle) -> None:
    gw = policy_gateway(REPLIES)
    reply = gw.chat("  PING ")
    assert reply.choices[0].message.content == "pong"
    assert reply.usage is not None and reply.usage.total_tokens == 0
    chunks = list(gw.chat("What are your hours on Sunday?", stream=True,
                          stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Always open."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
    assert fake.fake.tally.requests == 0
    rows = gw.rows()
    assert [(r.outcome, r.status, r.cost_nano, r.input_tokens, r.output_tokens)
            for r in rows] == [("auto_reply", 200, 0, 0, 0)] * 2
    assert rows[0].flags == ["auto_replies:answered"]


def test_completions_and_responses_auto_replies(policy_gateway: Make, fake: FakeHandle) -> None:
    gw = policy_gateway(REPLIES)
    api = gw.client()
    done = api.completions.create(model="gpt-3.5-turbo-instruct", prompt="ping")
    assert done.choices[0].text == "pong"
    streamed = list(api.completions.create(model="gpt-3.5-turbo-instruct", prompt="ping",
                                           stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "pong"
    response = api.responses.create(model=MODEL, input="ping")
    assert response.output_text == "pong" and response.status == "completed"
    events = list(api.responses.create(model=MODEL, input="ping", stream=True))
    assert [e.type for e in events][-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "pong"
    assert fake.fake.tally.requests == 0


def test_auto_reply_answers_only_after_the_blocking_policies(policy_gateway: Make) -> None:
    gw = policy_gateway({**REPLIES, "enforce_user_ids": True})
    with pytest.raises(openai.UnprocessableEntityError):
        gw.chat("ping")
    assert gw.chat("ping", user="u").choices[0].message.content == "pong"


def test_auto_reply_carries_a_header(policy_gateway: Make) -> None:
    gw = policy_gateway(REPLIES)
    raw = gw.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "ping"}])
    assert raw.headers["x-tokenstile-auto-reply"] == "true"


@pytest.mark.parametrize("streamed", [False, True])
def test_flagged_input_is_refused(policy_gateway: Make, fake: FakeHandle,
                                  streamed: bool) -> None:
    gw = policy_gateway({"auto_moderate": True})
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        gw.chat("tell me something forbidden", max_tokens=3, stream=streamed)
    assert caught.value.code == "content_flagged"
    assert message(caught) == ("tokenstile: the input was flagged by moderation (violence) "
                               "and is refused for this gateway")
    [record] = fake.fake.tally.records
    assert record.route.endswith("/moderations")
    assert record.body["input"] == "tell me something forbidden"
    [row] = gw.rows()
    assert row.detail["moderation"] == {"flagged": True, "categories": ["violence"]}
    assert row.block_reason == "policy:content_flagged"


@pytest.mark.parametrize("streamed", [False, True])
def test_moderation_joins_the_other_reasons_in_one_error(policy_gateway: Make,
                                                        fake: FakeHandle,
                                                        streamed: bool) -> None:
    gw = policy_gateway({"wordlists": {"secrets": ["project zeus"]}, "auto_moderate": True,
                         "request_wordlists": "secrets:block", "max_tokens": 10})
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        gw.chat("forbidden talk of Project Zeus", max_tokens=50, stream=streamed)
    assert caught.value.code == "max_tokens_exceeded"  # the first reason's code and param
    assert message(caught) == (
        "tokenstile: max_tokens 50 exceeds the limit of 10 for this gateway; the request "
        "contains words from the 'secrets' word list, blocked for this gateway; the input "
        "was flagged by moderation (violence) and is refused for this gateway")
    assert [r.route.rsplit("/", 1)[-1] for r in fake.fake.tally.records] == ["moderations"]
    [row] = gw.rows()
    assert row.block_reason == "policy:max_tokens_exceeded,wordlist_blocked,content_flagged"
    assert row.status == 422


def test_a_failed_moderation_joins_too_and_the_status_is_the_first_reasons(
        policy_gateway: Make, fake: FakeHandle) -> None:
    gw = policy_gateway({"auto_moderate": {"failure_mode": "closed"}, "max_tokens": 10})
    fake.fake.script(["[[fake:status=500]]"])
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        gw.chat("hello", max_tokens=50)
    assert message(caught) == (
        "tokenstile: max_tokens 50 exceeds the limit of 10 for this gateway; the input could "
        "not be moderated (the upstream answered 500) and moderation is required for this "
        "gateway; try again shortly")


def test_a_refused_request_gets_no_auto_reply(policy_gateway: Make, fake: FakeHandle) -> None:
    gw = policy_gateway({**REPLIES, "auto_moderate": True, "max_tokens": 10})
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        gw.chat("ping", max_tokens=50)
    assert caught.value.code == "max_tokens_exceeded"
    assert gw.rows()[0].block_reason == "policy:max_tokens_exceeded"


def test_clean_input_passes_and_unlisted_categories_only_flag(policy_gateway: Make,
                                                              fake: FakeHandle) -> None:
    gw = policy_gateway({"auto_moderate": {"categories": ["hate"]}})
    assert gw.chat("all good", max_tokens=2).choices
    assert gw.chat("forbidden but not hateful", max_tokens=2).choices
    assert [r.route.rsplit("/", 1)[-1] for r in fake.fake.tally.records] == [
        "moderations", "completions", "moderations", "completions"]
    assert gw.rows()[1].flags == ["auto_moderate:flagged_other:violence"]


def test_moderation_failure_open_lets_the_request_through(policy_gateway: Make,
                                                          fake: FakeHandle) -> None:
    gw = policy_gateway({"auto_moderate": {"failure_mode": "open"}})
    fake.fake.script(["[[fake:status=500]]"])
    assert gw.chat("hello", max_tokens=2).choices
    [row] = gw.rows()
    assert row.flags == ["auto_moderate:unavailable"]
    assert row.detail["moderation"]["error"] == "the upstream answered 500"


def test_moderation_failure_closed_refuses_with_503(policy_gateway: Make,
                                                    fake: FakeHandle) -> None:
    gw = policy_gateway({"auto_moderate": {"failure_mode": "closed", "timeout_s": 0.2}})
    fake.fake.script(["[[fake:hang]]"])
    with pytest.raises(openai.InternalServerError) as caught:
        gw.chat("hello", max_tokens=2)
    assert caught.value.status_code == 503
    assert caught.value.code == "moderation_unavailable"
    assert message(caught) == ("tokenstile: the input could not be moderated (no answer "
                               "within 0.2s) and moderation is required for this gateway; try "
                               "again shortly")
    assert fake.fake.tally.requests <= 1


def test_moderation_by_header(policy_gateway: Make) -> None:
    gw = policy_gateway({})
    with pytest.raises(openai.UnprocessableEntityError):
        gw.chat("forbidden", max_tokens=2, headers={"x-usagepanda-auto-moderate": "true"})


def test_usage_panda_key_header_in_migration_mode(make_gateway: Any,
                                                  fake: FakeHandle) -> None:
    gateway = make_gateway({"auth": {"migration_mode": True, "mode": "both"}})
    own_key = gateway.key(project="migrated", name="up", passthrough=True)
    plain_key = gateway.key(project="migrated", name="plain")
    # the client's code is unchanged: its OpenAI key, the Usage Panda headers
    client = openai.OpenAI(base_url=gateway.v1, api_key="sk-client-own-openai-key",
                           max_retries=0,
                           default_headers={"x-usagepanda-api-key": own_key,
                                            "x-usagepanda-max-tokens": "10"})
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model=MODEL, max_tokens=50,
                                       messages=[{"role": "user", "content": "hi"}])
    assert message(caught) == ("tokenstile: max_tokens 50 exceeds the limit of 10 set by the "
                               "x-usagepanda-max-tokens header")
    client.chat.completions.create(model=MODEL, max_tokens=5,
                                   messages=[{"role": "user", "content": "hi"}])
    assert fake.fake.tally.last is not None
    assert fake.fake.tally.last.headers["authorization"] == "Bearer sk-client-own-openai-key"
    # a key that does not forward the client's own provider key, sent on its own
    status, _ = post_json(f"{gateway.v1}/chat/completions", {
        "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
        {"x-usagepanda-api-key": plain_key})
    assert status == 200
    rows = gateway.rows()
    assert [(r.project, r.status) for r in rows] == [("migrated", 422), ("migrated", 200),
                                                     ("migrated", 200)]


def test_usage_panda_key_header_is_ignored_without_migration_mode(make_gateway: Any) -> None:
    gateway = make_gateway({})
    key = gateway.key(project="p")
    status, body = post_json(f"{gateway.v1}/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        {"x-usagepanda-api-key": key})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
