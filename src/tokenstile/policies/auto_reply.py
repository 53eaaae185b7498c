"""Canned answers in the endpoint's own shape, whole or streamed, with zero usage.

The shapes are the ones OpenAI's SDK parses for chat completions, legacy completions and
the Responses API, Anthropic's SDK for Messages, and the ``google-genai`` SDK for Gemini's
``generateContent`` (its stream: one SSE chunk), so a client cannot tell an auto-reply from
a short model answer except by the ``x-tokenstile-auto-reply`` header.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenstile.providers.sse import data_event, named_event
from tokenstile.types import AutoReply

Json = dict[str, Any]

_CHAT_USAGE: Json = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
_RESPONSES_USAGE: Json = {
    "input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0,
}


def _event(obj: Json) -> bytes:
    return named_event(str(obj["type"]), obj)


def render(api: str, model: str, text: str, *, stream: bool, created: int, ident: str,
           include_usage: bool = False) -> AutoReply:
    """The reply for ``api``; ``ident`` makes its ids unique."""
    if api == "chat":
        return _chat(model, text, stream, created, ident, include_usage)
    if api == "completions":
        return _completion(model, text, stream, created, ident, include_usage)
    if api == "messages":
        return _messages(model, text, stream, ident)
    if api == "generate_content":
        return _gemini(model, text, stream, ident)
    return _responses(model, text, stream, created, ident)


def _whole(obj: Json) -> AutoReply:
    return AutoReply((orjson.dumps(obj),))


def _sse(chunks: list[bytes]) -> AutoReply:
    return AutoReply(tuple(chunks), content_type="text/event-stream; charset=utf-8")


def _chat(model: str, text: str, stream: bool, created: int, ident: str,
          include_usage: bool) -> AutoReply:
    base: Json = {"id": f"chatcmpl-{ident}", "created": created, "model": model}
    if not stream:
        return _whole({**base, "object": "chat.completion", "choices": [{
            "index": 0, "logprobs": None, "finish_reason": "stop",
            "message": {"role": "assistant", "content": text, "refusal": None}}],
            "usage": _CHAT_USAGE})
    base["object"] = "chat.completion.chunk"

    def chunk(delta: Json, finish: str | None) -> bytes:
        return data_event({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}]})

    chunks = [chunk({"role": "assistant", "content": ""}, None), chunk({"content": text}, None),
              chunk({}, "stop")]
    if include_usage:
        chunks.append(data_event({**base, "choices": [], "usage": _CHAT_USAGE}))
    return _sse([*chunks, b"data: [DONE]\n\n"])


def _completion(model: str, text: str, stream: bool, created: int, ident: str,
                include_usage: bool) -> AutoReply:
    base: Json = {"id": f"cmpl-{ident}", "object": "text_completion", "created": created,
                  "model": model}

    def choice(piece: str, finish: str | None) -> Json:
        return {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}

    if not stream:
        return _whole({**base, "choices": [choice(text, "stop")], "usage": _CHAT_USAGE})
    chunks = [data_event({**base, "choices": [choice(text, None)]}),
              data_event({**base, "choices": [choice("", "stop")]})]
    if include_usage:
        chunks.append(data_event({**base, "choices": [], "usage": _CHAT_USAGE}))
    return _sse([*chunks, b"data: [DONE]\n\n"])


def _response(model: str, ident: str, created: int, status: str, output: list[Json]) -> Json:
    return {
        "id": f"resp_{ident}", "object": "response", "created_at": created, "status": status,
        "error": None, "incomplete_details": None, "instructions": None,
        "max_output_tokens": None, "model": model, "output": output,
        "parallel_tool_calls": True, "previous_response_id": None, "temperature": 1.0,
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "metadata": {},
        "text": {"format": {"type": "text"}}, "truncation": "disabled",
        "usage": _RESPONSES_USAGE if status == "completed" else None,
    }


def _responses(model: str, text: str, stream: bool, created: int, ident: str) -> AutoReply:
    part: Json = {"type": "output_text", "text": text, "annotations": []}
    item: Json = {"type": "message", "id": f"msg_{ident}", "status": "completed",
                  "role": "assistant", "content": [part]}
    done = _response(model, ident, created, "completed", [item])
    if not stream:
        return _whole(done)
    where: Json = {"item_id": item["id"], "output_index": 0}
    events: list[Json] = [
        {"type": "response.created",
         "response": _response(model, ident, created, "in_progress", [])},
        {"type": "response.in_progress",
         "response": _response(model, ident, created, "in_progress", [])},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "content_index": 0,
         "part": {**part, "text": ""}},
        {"type": "response.output_text.delta", **where, "content_index": 0, "delta": text},
        {"type": "response.output_text.done", **where, "content_index": 0, "text": text},
        {"type": "response.content_part.done", **where, "content_index": 0, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": done},
    ]
    return _sse([_event({**event, "sequence_number": n}) for n, event in enumerate(events)])


_MESSAGES_USAGE: Json = {"input_tokens": 0, "output_tokens": 0,
                         "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _messages(model: str, text: str, stream: bool, ident: str) -> AutoReply:
    message: Json = {"id": f"msg_{ident}", "type": "message", "role": "assistant",
                     "model": model, "content": [{"type": "text", "text": text}],
                     "stop_reason": "end_turn", "stop_sequence": None,
                     "usage": _MESSAGES_USAGE}
    if not stream:
        return _whole(message)
    events: list[Json] = [
        {"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                              "usage": {**_MESSAGES_USAGE}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 0}},
        {"type": "message_stop"},
    ]
    return _sse([_event(event) for event in events])


_GEMINI_USAGE: Json = {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0}


def _gemini(model: str, text: str, stream: bool, ident: str) -> AutoReply:
    answer: Json = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": _GEMINI_USAGE, "modelVersion": model,
                    "responseId": ident}
    if not stream:
        return _whole(answer)
    return _sse([b"data: " + orjson.dumps(answer) + b"\r\n\r\n"])
