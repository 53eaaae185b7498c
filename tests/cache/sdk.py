"""Read replayed streams the way the official SDKs do: validate every event against the SDK's
types and run the SDK's own stream accumulators over them."""

from __future__ import annotations

from typing import Any, cast

import orjson
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tokenstile.providers.sse import EventSplitter, event_fields

_RESPONSE_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
_MESSAGE_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
_SDK_ONLY = frozenset({"parsed", "parsed_arguments", "parsed_output"})


def events_of(chunks: list[bytes]) -> list[tuple[str | None, bytes]]:
    """(event name, data) of every event; every chunk must hold whole events only."""
    out: list[tuple[str | None, bytes]] = []
    for chunk in chunks:
        splitter = EventSplitter()
        out.extend(event_fields(event) for event in splitter.feed(chunk))
        assert splitter.rest() == b"", "a chunk ended in the middle of an event"
    return out


def plain(value: Any) -> Any:
    """A model dump without the SDK's own helper fields (``parsed``…) and without Nones."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k not in _SDK_ONLY and v is not None}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def chat_from_stream(chunks: list[bytes]) -> tuple[ChatCompletion, list[ChatCompletionChunk]]:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    parsed = []
    events = events_of(chunks)
    assert events[-1] == (None, b"[DONE]")
    for name, data in events[:-1]:
        assert name is None
        chunk = ChatCompletionChunk.model_validate_json(data)
        parsed.append(chunk)
        state.handle_chunk(chunk)
    # the snapshot, not get_final_completion(): that one refuses answers cut by max_tokens
    snapshot = state.current_completion_snapshot
    return ChatCompletion.model_validate(snapshot.model_dump()), parsed


def completion_from_stream(chunks: list[bytes]) -> list[Completion]:
    events = events_of(chunks)
    assert events[-1] == (None, b"[DONE]")
    # The SDK builds completion chunks leniently (its type says finish_reason is never null,
    # which only the last chunk honours, from OpenAI as from us): do as it does.
    return [cast(Completion, construct_type(type_=Completion, value=orjson.loads(data)))
            for _, data in events[:-1]]


def response_from_stream(chunks: list[bytes]) -> Response:
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for expected_sequence, (name, data) in enumerate(events_of(chunks)):
        event = _RESPONSE_EVENT.validate_json(data)
        assert event.type == name and event.sequence_number == expected_sequence
        for out in state.handle_event(event):
            if out.type in ("response.completed", "response.incomplete"):
                final = out.response
    assert final is not None
    return Response.model_validate(final.model_dump())


def message_from_stream(chunks: list[bytes]) -> Message:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    names = []
    for name, data in events_of(chunks):
        names.append(name)
        if name == "ping":  # the SDK drops pings before they reach its types
            assert orjson.loads(data) == {"type": "ping"}
            continue
        event = _MESSAGE_EVENT.validate_json(data)
        assert event.type == name
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert snapshot is not None
    return Message.model_validate(snapshot.model_dump())


def same_chat(final: ChatCompletion, body: bytes) -> None:
    expected = ChatCompletion.model_validate_json(body)
    got, want = plain(final.model_dump(mode="json")), plain(expected.model_dump(mode="json"))
    for choice in want.get("choices", []):
        if choice["message"].get("annotations") == []:  # not sent when there are none
            choice["message"].pop("annotations")
    for choice in got.get("choices", []):
        if choice["message"].get("annotations") == []:
            choice["message"].pop("annotations")
        for call in choice["message"].get("tool_calls", []):
            call.pop("index", None)  # the SDK's accumulator keeps the stream's index
    got["object"] = want["object"]
    assert got == want


def loads(body: bytes) -> Any:
    return orjson.loads(body)
