"""How the fake upstream spells its replies for OpenAI and Anthropic, streamed or not.

Shapes follow what the official ``openai`` and ``anthropic`` SDKs parse (their
``types`` packages), including the fields real servers send that SDK helpers rely on:
``stream_options.include_usage``'s final ``choices: []`` chunk, the Responses event
sequence with ``sequence_number``, Anthropic's ``message_start`` / ``message_delta`` usage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ._fake_core import Reply

__all__ = [
    "StreamParts",
    "Turn",
    "anthropic_error",
    "anthropic_message",
    "anthropic_stream",
    "chat_body",
    "chat_stream",
    "completion_body",
    "completion_stream",
    "final_status",
    "openai_error",
    "responses_body",
    "responses_state",
    "responses_stream",
    "responses_usage",
    "responses_usage_of",
]

Json = dict[str, Any]


@dataclass(slots=True)
class Turn:
    """One answered call: ids, the counted input and the planned reply."""

    id: str
    item_id: str
    call_id: str
    model: str
    created: int
    input_tokens: int  # total, cached and cache writes included (OpenAI's convention)
    cached_tokens: int
    cache_write_tokens: int
    reply: Reply
    request: Mapping[str, Any]
    include_usage: bool = False
    no_usage: bool = False
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0  # part of input_tokens
    cached_audio_tokens: int = 0  # part of cached_tokens
    web_searches: int = 0
    web_fetches: int = 0
    file_searches: int = 0
    service_tier: str = "default"
    usage_dialect: str | None = None  # see ``Directives.usage_dialect``

    @property
    def output_tokens(self) -> int:
        return self.reply.output_tokens


@dataclass(slots=True)
class StreamParts:
    """A stream cut into: what precedes the tokens, one frame per token, what follows.

    ``error(n)`` renders the in-stream error frame sent after ``n`` token frames.
    """

    head: bytes
    pieces: list[bytes]
    tail: bytes
    error: Callable[[int], bytes]


def _data(obj: Json) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(name: str, obj: Json) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

_OPENAI_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}

_ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def openai_error(status: int, message: str, *, param: str | None = None) -> Json:
    """``{"error": {"message", "type", "param", "code"}}``."""
    kind, code = _OPENAI_ERROR_TYPES.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )


def anthropic_error(status: int, message: str, request_id: str) -> Json:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
        "request_id": request_id,
    }


# ---------------------------------------------------------------------------------------
# OpenAI usage blocks
# ---------------------------------------------------------------------------------------


def _cached_details(t: Turn) -> Json:
    """The audio/text split of the cache reads, as OpenAI's realtime models report it."""
    return {"audio_tokens": t.cached_audio_tokens,
            "text_tokens": t.cached_tokens - t.cached_audio_tokens}


def chat_usage(t: Turn) -> Json:
    prompt_details: Json = {"cached_tokens": t.cached_tokens,
                            "audio_tokens": t.input_audio_tokens}
    if t.cache_write_tokens:
        prompt_details["cache_write_tokens"] = t.cache_write_tokens
    if t.cached_audio_tokens:
        prompt_details["cached_tokens_details"] = _cached_details(t)
    usage: Json = {
        "prompt_tokens": t.input_tokens,
        "completion_tokens": t.output_tokens,
        "total_tokens": t.input_tokens + t.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": t.reply.reasoning_tokens,
            "audio_tokens": t.reply.audio_tokens,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if t.usage_dialect == "xai":
        usage["completion_tokens"] = t.output_tokens - t.reply.reasoning_tokens
    elif t.usage_dialect == "deepseek":
        del usage["prompt_tokens_details"]
        usage["prompt_cache_hit_tokens"] = t.cached_tokens
        usage["prompt_cache_miss_tokens"] = t.input_tokens - t.cached_tokens
    return usage


def responses_usage(t: Turn) -> Json:
    input_details: Json = {"cached_tokens": t.cached_tokens,
                           "cache_write_tokens": t.cache_write_tokens}
    if t.input_audio_tokens:
        input_details["audio_tokens"] = t.input_audio_tokens
    if t.cached_audio_tokens:
        input_details["cached_tokens_details"] = _cached_details(t)
    output_details: Json = {"reasoning_tokens": t.reply.reasoning_tokens}
    if t.reply.audio_tokens:
        output_details["audio_tokens"] = t.reply.audio_tokens
    return {
        "input_tokens": t.input_tokens,
        "input_tokens_details": input_details,
        "output_tokens": t.output_tokens,
        "output_tokens_details": output_details,
        "total_tokens": t.input_tokens + t.output_tokens,
    }


def _chat_finish(reply: Reply) -> str:
    return "tool_calls" if reply.finish == "tool" else reply.finish


def _in_stream_openai_error(message: str) -> Callable[[int], bytes]:
    def render(_: int) -> bytes:
        return _data(
            {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        )

    return render


STREAM_ERROR_MESSAGE = "The server had an error while processing your request."

# ---------------------------------------------------------------------------------------
# OpenAI chat completions
# ---------------------------------------------------------------------------------------


def chat_body(t: Turn) -> Json:
    reply = t.reply
    message: Json = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    if reply.finish == "tool":
        message["tool_calls"] = [
            {
                "id": t.call_id,
                "type": "function",
                "function": {"name": reply.tool_name, "arguments": reply.tool_arguments},
            }
        ]
    else:
        message["content"] = reply.text
    if reply.reasoning_pieces:
        message["reasoning_content"] = "".join(reply.reasoning_pieces)
    body: Json = {
        "id": t.id,
        "object": "chat.completion",
        "created": t.created,
        "model": t.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _chat_finish(reply),
            }
        ],
        "service_tier": t.service_tier,
        "system_fingerprint": "fp_fake",
    }
    if not t.no_usage:
        body["usage"] = chat_usage(t)
    return body


def chat_stream(t: Turn) -> StreamParts:
    reply = t.reply
    with_usage = t.include_usage and not t.no_usage
    base: Json = {
        "id": t.id,
        "object": "chat.completion.chunk",
        "created": t.created,
        "model": t.model,
        "service_tier": t.service_tier,
        "system_fingerprint": "fp_fake",
    }

    def chunk(delta: Json, finish: str | None = None, **extra: Any) -> bytes:
        obj: Json = {
            **base,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if with_usage:
            obj["usage"] = None
        return _data({**obj, **extra})

    if reply.finish == "tool":
        head = chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": t.call_id,
                        "type": "function",
                        "function": {"name": reply.tool_name, "arguments": ""},
                    }
                ],
                "refusal": None,
            }
        )
        pieces = [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
            for p in reply.pieces
        ]
    else:
        head = chunk({"role": "assistant", "content": "", "refusal": None})
        pieces = [chunk({"content": p}) for p in reply.pieces]
    pieces[:0] = [chunk({"reasoning_content": p}) for p in reply.reasoning_pieces]
    # Usage on the last chunk whether asked for or not: Mistral's own, Groq's x_groq.
    own: Json = {}
    if t.usage_dialect == "mistral" and not t.no_usage:
        own = {"usage": chat_usage(t)}
    elif t.usage_dialect == "groq" and not t.no_usage:
        own = {"x_groq": {"id": "req_" + t.id, "usage": chat_usage(t)}}
    tail = chunk({}, _chat_finish(reply), **own)
    if with_usage:
        tail += _data({**base, "choices": [], "usage": chat_usage(t)})
    tail += b"data: [DONE]\n\n"
    return StreamParts(head, pieces, tail, _in_stream_openai_error(STREAM_ERROR_MESSAGE))


# ---------------------------------------------------------------------------------------
# OpenAI legacy completions
# ---------------------------------------------------------------------------------------


def _completion_usage(t: Turn) -> Json:
    return {
        "prompt_tokens": t.input_tokens,
        "completion_tokens": t.output_tokens,
        "total_tokens": t.input_tokens + t.output_tokens,
    }


def completion_body(t: Turn) -> Json:
    body: Json = {
        "id": t.id,
        "object": "text_completion",
        "created": t.created,
        "model": t.model,
        "choices": [
            {"text": t.reply.text, "index": 0, "logprobs": None, "finish_reason": t.reply.finish}
        ],
        "system_fingerprint": "fp_fake",
    }
    if not t.no_usage:
        body["usage"] = _completion_usage(t)
    return body


def completion_stream(t: Turn) -> StreamParts:
    with_usage = t.include_usage and not t.no_usage
    base: Json = {"id": t.id, "object": "text_completion", "created": t.created, "model": t.model}

    def chunk(text: str, finish: str | None = None) -> bytes:
        obj: Json = {
            **base,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            obj["usage"] = None
        return _data(obj)

    pieces = [chunk(p) for p in t.reply.pieces]
    tail = chunk("", t.reply.finish)
    if with_usage:
        tail += _data({**base, "choices": [], "usage": _completion_usage(t)})
    tail += b"data: [DONE]\n\n"
    return StreamParts(b"", pieces, tail, _in_stream_openai_error(STREAM_ERROR_MESSAGE))


# ---------------------------------------------------------------------------------------
# OpenAI Responses
# ---------------------------------------------------------------------------------------


def _response_object(t: Turn, status: str, output: list[Json], final: bool) -> Json:
    req = t.request
    incomplete = final and status == "incomplete"
    return {
        "id": t.id,
        "object": "response",
        "created_at": t.created,
        "status": status,
        "background": req.get("background") is True,
        "completed_at": t.created if final and status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": t.model,
        "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": t.service_tier,
        "store": req.get("store", True),
        "temperature": req.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": req.get("tool_choice", "auto"),
        "tools": req.get("tools") or [],
        "top_p": req.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": responses_usage(t) if final and not t.no_usage else None,
        "user": None,
        "metadata": req.get("metadata") or {},
    }


def _final_status(reply: Reply) -> str:
    return "incomplete" if reply.finish == "length" else "completed"


def _output_item(t: Turn, status: str, done: bool) -> Json:
    reply = t.reply
    if reply.finish == "tool":
        return {
            "type": "function_call",
            "id": t.item_id,
            "call_id": t.call_id,
            "name": reply.tool_name,
            "arguments": reply.tool_arguments if done else "",
            "status": status,
        }
    content = [_text_part(reply.text)] if done else []
    return {
        "type": "message",
        "id": t.item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _text_part(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _search_items(t: Turn, done: bool) -> list[Json]:
    """The server-side searches the answer ran, as Responses output items."""
    uid = t.id.split("_", 1)[-1]
    status = "completed" if done else "in_progress"
    web: list[Json] = [{"type": "web_search_call", "id": f"ws_{uid}{i}", "status": status,
                        "action": {"type": "search", "query": "alpha"}}
                       for i in range(t.web_searches)]
    files: list[Json] = [{"type": "file_search_call", "id": f"fs_{uid}{i}", "status": status,
                          "queries": ["alpha"], "results": None}
                         for i in range(t.file_searches)]
    return web + files


def _reasoning_item(t: Turn, done: bool) -> list[Json]:
    """The reasoning shown as a Responses output item (none when it is hidden)."""
    if not t.reply.reasoning_pieces:
        return []
    text = "".join(t.reply.reasoning_pieces) if done else ""
    return [{"type": "reasoning", "id": "rs_" + t.id.split("_", 1)[-1], "summary": [],
             "content": [{"type": "reasoning_text", "text": text}] if done else [],
             "status": "completed" if done else "in_progress"}]


def responses_body(t: Turn) -> Json:
    status = _final_status(t.reply)
    return _response_object(t, status, [*_search_items(t, True), *_reasoning_item(t, True),
                                         _output_item(t, status, True)], final=True)


def final_status(t: Turn) -> str:
    """``completed``, or ``incomplete`` when the output cap cut the reply."""
    return _final_status(t.reply)


def responses_state(t: Turn, status: str, usage: Json | None) -> Json:
    """A (background) response as ``GET /v1/responses/{id}`` shows it in ``status``."""
    finished = status in ("completed", "incomplete")
    output = [_output_item(t, status, True)] if finished else []
    obj = _response_object(t, status, output, final=finished)
    obj["usage"] = usage
    return obj


def responses_usage_of(input_tokens: int, output_tokens: int, cached: int = 0,
                       reasoning: int = 0) -> Json:
    """A Responses usage block for a part of a turn (a cancelled background response)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def responses_stream(t: Turn) -> StreamParts:
    reply = t.reply
    seq = 0
    out: list[bytes] = []

    def emit(obj: Json) -> bytes:
        nonlocal seq
        obj["sequence_number"] = seq
        seq += 1
        return _event(str(obj["type"]), obj)

    searches = _search_items(t, True)
    reasoning = _reasoning_item(t, True)
    index = len(searches) + len(reasoning)  # the answer's own item comes last
    common = {"item_id": t.item_id, "output_index": index}
    out.append(emit({
        "type": "response.created",
        "response": _response_object(t, "in_progress", [], final=False),
    }))
    out.append(emit({
        "type": "response.in_progress",
        "response": _response_object(t, "in_progress", [], final=False),
    }))
    for i, (started, done) in enumerate(zip(_search_items(t, False), searches, strict=True)):
        out.append(emit({"type": "response.output_item.added", "output_index": i,
                         "item": started}))
        out.append(emit({"type": "response.output_item.done", "output_index": i,
                         "item": done}))
    pieces: list[bytes] = []
    answer_head: list[bytes] = []
    if reasoning:
        shown = {"item_id": reasoning[0]["id"], "output_index": len(searches),
                 "content_index": 0}
        out.append(emit({"type": "response.output_item.added",
                         "output_index": len(searches), "item": _reasoning_item(t, False)[0]}))
        pieces.extend(emit({"type": "response.reasoning_text.delta", **shown, "delta": p})
                      for p in reply.reasoning_pieces)
        answer_head.append(emit({"type": "response.reasoning_text.done", **shown,
                                 "text": "".join(reply.reasoning_pieces)}))
        answer_head.append(emit({"type": "response.output_item.done",
                                 "output_index": len(searches), "item": reasoning[0]}))
    answer_head.append(emit({
        "type": "response.output_item.added",
        "output_index": index,
        "item": _output_item(t, "in_progress", False),
    }))
    is_tool = reply.finish == "tool"
    if not is_tool:
        answer_head.append(emit({
            "type": "response.content_part.added",
            **common,
            "content_index": 0,
            "part": _text_part(""),
        }))
    if not reasoning:
        out.extend(answer_head)
        answer_head = []
    head = b"".join(out)
    for p in reply.pieces:
        if is_tool:
            pieces.append(emit({
                "type": "response.function_call_arguments.delta", **common, "delta": p,
            }))
        else:
            pieces.append(emit({
                "type": "response.output_text.delta",
                **common,
                "content_index": 0,
                "delta": p,
                "logprobs": [],
            }))
    after_pieces = seq
    status = _final_status(reply)
    tail: list[bytes] = []
    if is_tool:
        tail.append(emit({
            "type": "response.function_call_arguments.done",
            **common,
            "name": reply.tool_name,
            "arguments": reply.tool_arguments,
        }))
    else:
        tail.append(emit({
            "type": "response.output_text.done",
            **common,
            "content_index": 0,
            "text": reply.text,
            "logprobs": [],
        }))
        tail.append(emit({
            "type": "response.content_part.done",
            **common,
            "content_index": 0,
            "part": _text_part(reply.text),
        }))
    item = _output_item(t, status, True)
    tail.append(emit({"type": "response.output_item.done", "output_index": index,
                      "item": item}))
    final_type = "response.completed" if status == "completed" else "response.incomplete"
    tail.append(emit({
        "type": final_type,
        "response": _response_object(t, status, [*searches, *reasoning, item], final=True),
    }))
    if answer_head:  # shown reasoning: the answer's first frame opens its item
        first = len(reply.reasoning_pieces)
        if first < len(pieces):
            pieces[first] = b"".join(answer_head) + pieces[first]
        else:
            tail.insert(0, b"".join(answer_head))

    def error(n: int) -> bytes:
        failed = _response_object(t, "failed", [], final=False)
        failed["error"] = {"code": "server_error", "message": STREAM_ERROR_MESSAGE}
        obj: Json = {
            "type": "response.failed",
            "response": failed,
            "sequence_number": after_pieces - len(pieces) + n,
        }
        return _event("response.failed", obj)

    return StreamParts(head, pieces, b"".join(tail), error)


# ---------------------------------------------------------------------------------------
# Anthropic messages
# ---------------------------------------------------------------------------------------

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}


def anthropic_usage(t: Turn, output_tokens: int) -> Json:
    """Anthropic's ``input_tokens`` excludes cache reads and cache writes."""
    usage: Json = {
        "input_tokens": t.input_tokens - t.cached_tokens - t.cache_write_tokens,
        "cache_creation_input_tokens": t.cache_write_tokens,
        "cache_read_input_tokens": t.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": t.cache_write_tokens - t.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": t.cache_write_1h_tokens,
        },
        "output_tokens": output_tokens,
        "service_tier": t.service_tier,
    }
    if t.web_searches or t.web_fetches:
        usage["server_tool_use"] = {"web_search_requests": t.web_searches,
                                    "web_fetch_requests": t.web_fetches}
    return usage


def _anthropic_block(t: Turn, done: bool) -> Json:
    reply = t.reply
    if reply.finish == "tool":
        return {
            "type": "tool_use",
            "id": t.call_id,
            "name": reply.tool_name,
            "input": reply.tool_input if done else {},
        }
    return {"type": "text", "text": reply.text if done else ""}


def _thinking_block(t: Turn, done: bool) -> list[Json]:
    """The reasoning shown as a ``thinking`` block (none when it is hidden)."""
    if not t.reply.reasoning_pieces:
        return []
    return [{"type": "thinking", "signature": "" if not done else "sig_fake",
             "thinking": "".join(t.reply.reasoning_pieces) if done else ""}]


def anthropic_message(t: Turn) -> Json:
    message: Json = {
        "id": t.id,
        "type": "message",
        "role": "assistant",
        "model": t.model,
        "content": [*_thinking_block(t, True), _anthropic_block(t, True)],
        "stop_reason": _STOP_REASONS[t.reply.finish],
        "stop_sequence": None,
        "usage": anthropic_usage(t, t.output_tokens),
    }
    if t.no_usage:
        del message["usage"]
    return message


def anthropic_stream(t: Turn) -> StreamParts:
    reply = t.reply
    start = {
        "type": "message_start",
        "message": {
            "id": t.id,
            "type": "message",
            "role": "assistant",
            "model": t.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage(t, 1),
        },
    }
    thinking = _thinking_block(t, False)
    at = len(thinking)  # the answer's block follows the thinking
    opening = _event("content_block_start", {
        "type": "content_block_start",
        "index": at,
        "content_block": _anthropic_block(t, False),
    })
    head = _event("message_start", start)
    if thinking:
        head += _event("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": thinking[0]})
    else:
        head += opening
    head += _event("ping", {"type": "ping"})
    if reply.finish == "tool":
        pieces = [
            _event("content_block_delta", {
                "type": "content_block_delta",
                "index": at,
                "delta": {"type": "input_json_delta", "partial_json": p},
            })
            for p in reply.pieces
        ]
    else:
        pieces = [
            _event("content_block_delta", {
                "type": "content_block_delta",
                "index": at,
                "delta": {"type": "text_delta", "text": p},
            })
            for p in reply.pieces
        ]
    if thinking:
        shut = (_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig_fake"}})
            + _event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + opening)
        if pieces:
            pieces[0] = shut + pieces[0]
        pieces[:0] = [_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": p}})
            for p in reply.reasoning_pieces]
    usage = anthropic_usage(t, t.output_tokens)
    delta_usage = {
        k: usage[k]
        for k in (
            "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
            "output_tokens", "server_tool_use",
        )
        if k in usage
    }
    tail = (
        (shut if thinking and not reply.pieces else b"")
        + _event("content_block_stop", {"type": "content_block_stop", "index": at})
        + _event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP_REASONS[reply.finish], "stop_sequence": None},
            "usage": delta_usage,
        })
        + _event("message_stop", {"type": "message_stop"})
    )

    def error(_: int) -> bytes:
        return _event(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )

    return StreamParts(head, pieces, tail, error)
