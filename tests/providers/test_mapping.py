"""The mappings the wire-format translations share (``providers.mapping``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenstile.errors import GatewayError
from tokenstile.providers.mapping import (
    CONVERSE_FINISH_REASONS,
    DONE,
    ChatChunks,
    anthropic_usage,
    chat_cap,
    chat_id,
    chat_tool_call,
    finish_reason,
    message_id,
    only_model_or_cap_changed,
    stop_reason,
    tool_input,
    upstream_answered,
)
from tokenstile.providers.messages_over_chat import MessagesOverChat, messages_to_chat
from tokenstile.types import CanonicalRequest, Usage


def test_reasons_map_both_ways_and_default_for_the_unknown() -> None:
    assert finish_reason("max_tokens") == "length"
    assert finish_reason("refusal") == "content_filter"
    assert finish_reason("guardrail_intervened") == "stop"
    assert finish_reason("guardrail_intervened", CONVERSE_FINISH_REASONS) == "content_filter"
    assert finish_reason(None) == finish_reason("brand_new") == "stop"
    assert stop_reason("tool_calls") == stop_reason("function_call") == "tool_use"
    assert stop_reason(3) == stop_reason("brand_new") == "end_turn"


def test_ids_keep_where_they_came_from() -> None:
    assert chat_id("msg_01abc") == "chatcmpl-01abc"
    assert message_id("chatcmpl-xyz") == "msg_xyz"
    fresh = {chat_id(None), chat_id(""), chat_id(None)}
    assert len(fresh) == 3 and all(i.startswith("chatcmpl-") for i in fresh)
    assert message_id(None).startswith("msg_") and message_id(None) != message_id(None)


def test_anthropic_usage_takes_cache_reads_out_of_the_input() -> None:
    assert anthropic_usage(Usage(input_tokens=100, output_tokens=5,
                                 cached_input_tokens=60)) == {
        "input_tokens": 40, "output_tokens": 5, "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 0}
    assert anthropic_usage(None)["input_tokens"] == 0


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"q": 1}, {"q": 1}), ('{"q": 1}', {"q": 1}), (None, {}), ("  ", {}),
    ("[1, 2]", {"_raw": "[1, 2]"}), ("{broken", {"_raw": "{broken"}), ([1, 2], {"_raw": "[1,2]"}),
])
def test_tool_input_is_always_an_object(arguments: Any, expected: dict[str, Any]) -> None:
    assert tool_input(arguments) == expected


def test_a_tool_call_without_id_or_name_gets_stand_ins() -> None:
    assert chat_tool_call(None, 7, "{}", 2) == {
        "id": "call_2", "type": "function", "function": {"name": "", "arguments": "{}"}}
    assert chat_tool_call("toolu_1", "f", "", 0)["id"] == "toolu_1"


def _data(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    loaded: dict[str, Any] = orjson.loads(event[6:])
    return loaded


def test_chunks_share_one_id_and_the_first_carries_the_role() -> None:
    chunks = ChatChunks("m", include_usage=True, created=5)
    first, second = _data(chunks.delta({"content": "a"})), _data(chunks.delta({}, "stop"))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert second["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "stop"}
    assert first["id"] == second["id"] and first["created"] == 5 and first["usage"] is None
    last = _data(chunks.usage(Usage(input_tokens=3, output_tokens=2)))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 5
    assert "usage" not in _data(ChatChunks("m").delta({}))
    assert DONE == b"data: [DONE]\n\n"


def test_a_copy_with_another_model_or_cap_is_only_patched() -> None:
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    source = {"model": "a", "messages": messages}
    assert only_model_or_cap_changed({"model": "b", "messages": messages, "max_tokens": 9},
                                     source)
    assert not only_model_or_cap_changed({"model": "a", "messages": list(messages)}, source)
    assert not only_model_or_cap_changed({**source, "temperature": 0}, source)


def test_chat_cap_prefers_max_completion_tokens() -> None:
    assert chat_cap({"max_completion_tokens": 7, "max_tokens": 9}, 100) == 7
    assert chat_cap({"max_tokens": 9}, 100) == 9
    assert chat_cap({}, 100) == 100
    with pytest.raises(GatewayError):
        chat_cap({"max_tokens": 0}, 100)


def test_an_unreadable_error_body_is_quoted() -> None:
    assert upstream_answered(502, b"  Bad gateway \n") == "the upstream answered 502: Bad gateway"
    assert upstream_answered(500, b"") == "the upstream answered 500"


def test_a_bridge_s_translation_follows_a_replaced_body() -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "max_tokens": 10,
                            "messages": [{"role": "user", "content": "hi"}]}
    bridge = MessagesOverChat(body, 4096)
    req = CanonicalRequest(api="messages", wire="anthropic", model="gpt-4o", body=body)
    first = bridge.upstream_body(req)
    assert bridge.upstream_body(req) is first
    req.body = {**body, "model": "gpt-4o-mini", "max_tokens": 20}
    assert bridge.upstream_body(req) == messages_to_chat(req.body, 4096)
    assert bridge.model == "gpt-4o-mini"
