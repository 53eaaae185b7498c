"""Answers the gateway makes itself in Anthropic's shape, read by the real anthropic SDK."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from tokenstile.providers.anthropic import AnthropicStreamObserver, canned_message, canned_stream

MODEL = "claude-haiku-4-5"


def sdk(stream: bool, text: str) -> anthropic.Anthropic:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if stream:
            return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                                   content=b"".join(canned_stream(MODEL, text, "abc")))
        return httpx2.Response(200, json=canned_message(MODEL, text, "abc"))

    return anthropic.Anthropic(api_key="ts-test", base_url="http://gateway.test",
                               max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


@pytest.mark.parametrize("text", ["We are closed on Sundays.", ""])
def test_canned_answers_read_as_real_ones(text: str) -> None:
    hello: list[Any] = [{"role": "user", "content": "hi"}]
    whole = sdk(False, text).messages.create(model=MODEL, max_tokens=5,
                                             messages=hello)
    with sdk(True, text).messages.stream(model=MODEL, max_tokens=5,
                                         messages=hello) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        assert message.id == "msg_abc" and message.stop_reason == "end_turn"
        assert message.content[0].type == "text" and message.content[0].text == text
        assert (message.usage.input_tokens, message.usage.output_tokens) == (0, 0)


def test_a_canned_stream_costs_nothing_to_the_observer() -> None:
    observer = AnthropicStreamObserver(MODEL)
    for event in canned_stream(MODEL, "closed", "x"):
        assert observer.on_event(event) == event
    assert observer.output_text() == "closed"
    usage = observer.usage
    assert usage is not None and usage.total_tokens == 0
    assert orjson.loads(orjson.dumps(canned_message(MODEL, "a", "b")))["type"] == "message"
