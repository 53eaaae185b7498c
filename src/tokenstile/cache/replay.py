"""Serve a cached answer: its body as is, or rendered as the stream the client asked for.

A cached answer is stored non-streamed; a client that asked for a stream gets the event
sequence the provider itself would have sent for that answer, so the official SDKs (their
stream accumulators included) rebuild exactly the cached body:

- chat completions: a role chunk, content / refusal / tool-call argument chunks, a finish
  chunk, the usage chunk only when ``stream_options.include_usage`` was asked for (with
  ``"usage": null`` on every other chunk, as OpenAI sends it), then ``data: [DONE]``;
- legacy completions: text chunks, a finish chunk, the optional usage chunk, ``[DONE]``;
- Responses: ``response.created``, ``response.in_progress``, per output item its
  ``added`` / part / delta / ``done`` events, then ``response.completed`` (or
  ``response.incomplete``) with the cached response, numbered by ``sequence_number``;
- Anthropic messages: ``message_start`` … ``content_block_*`` … ``message_delta``,
  ``message_stop``;
- Gemini: a chunk per part (text in pieces), then one with each candidate's
  ``finishReason`` and the ``usageMetadata`` (``cache/gemini.py``).

Text is cut into pieces of ``piece_chars`` characters (the answer is all there, so there is
no reason to dribble it out a token at a time), and the events are grouped into writes of
about ``chunk_bytes`` so that a long answer is a few sends, not thousands.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from tokenstile.cache.answer import CachedAnswer, wants_stream_usage
from tokenstile.cache.gemini import gemini_events
from tokenstile.types import ApiKind, CanonicalRequest, WireFormat

Json = dict[str, Any]

DEFAULT_PIECE_CHARS = 512
DEFAULT_CHUNK_BYTES = 16 * 1024
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"


def content_type(stream: bool) -> str:
    return SSE_CONTENT_TYPE if stream else JSON_CONTENT_TYPE


def replay(
    api: ApiKind,
    wire: WireFormat,
    body: bytes,
    stream: bool,
    include_usage: bool,
    *,
    piece_chars: int = DEFAULT_PIECE_CHARS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[bytes]:
    """The bytes to send for a cache hit, in order (one element per body write).

    Non-streamed: ``[body]``. Streamed: the SSE rendering of ``body``. Raises ValueError if
    ``body`` is not a JSON object (then the entry is unusable: treat the hit as a miss).
    """
    if not stream or api in ("embeddings", "count_tokens"):
        return [body]
    return group_events(replay_events(api, wire, body, include_usage,
                                      piece_chars=piece_chars), chunk_bytes)


def replay_events(
    api: ApiKind,
    wire: WireFormat,
    body: bytes,
    include_usage: bool,
    *,
    piece_chars: int = DEFAULT_PIECE_CHARS,
) -> list[bytes]:
    """The SSE rendering of ``body``, one complete event per element: for a caller that
    passes each event through a stream observer (response policies) before sending.
    Raises ValueError if ``body`` is not a JSON object or ``api`` never streams."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"cached body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError("cached body is not a JSON object")
    pieces = max(1, piece_chars)
    if wire == "anthropic" and api == "messages":
        return list(_messages_events(payload, pieces))
    if wire == "gemini" and api == "generate_content":
        return list(gemini_events(payload, pieces))
    if wire == "openai" and api == "chat":
        return list(_chat_events(payload, include_usage, pieces))
    if wire == "openai" and api == "completions":
        return list(_completion_events(payload, include_usage, pieces))
    if wire == "openai" and api == "responses":
        return list(_responses_events(payload, pieces))
    raise ValueError(f"{wire} {api} answers are never streamed")


def replay_answer(req: CanonicalRequest, answer: CachedAnswer, **options: int) -> list[bytes]:
    """``replay`` for a parsed request: streamed if it asked, usage chunk if it asked."""
    return replay(answer.api, answer.wire, answer.body, req.stream, wants_stream_usage(req),
                  **options)


def group_events(events: Iterable[bytes], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[bytes]:
    """Whole events joined into writes of about ``chunk_bytes`` (never splitting one)."""
    out: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for event in events:
        pending.append(event)
        size += len(event)
        if size >= chunk_bytes:
            out.append(b"".join(pending))
            pending, size = [], 0
    if pending:
        out.append(b"".join(pending))
    return out


def _split(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _data(obj: Json) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(name: str, obj: Json) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


# -- OpenAI chat completions ------------------------------------------------------------------

_CHAT_MESSAGE_STREAMED = frozenset({"role", "content", "refusal", "tool_calls", "function_call"})


def _chunk_base(body: Json, kind: str, copied: tuple[str, ...]) -> Json:
    """What every chunk of a replayed OpenAI stream repeats: the answer's id, its
    ``object`` kind, when and by which model it was made, and the ``copied`` fields it has."""
    base: Json = {"id": body.get("id"), "object": kind, "created": body.get("created"),
                  "model": body.get("model")}
    for name in copied:
        if name in body:
            base[name] = body[name]
    return base


def _choice_chunk(base: Json, choice: Json, include_usage: bool) -> bytes:
    """One chunk of one choice (with ``"usage": null`` when the client asked for usage:
    only the last chunk carries it)."""
    obj: Json = {**base, "choices": [choice]}
    if include_usage:
        obj["usage"] = None
    return _data(obj)


def _usage_and_done(base: Json, body: Json, include_usage: bool) -> Iterator[bytes]:
    if include_usage and body.get("usage") is not None:
        yield _data({**base, "choices": [], "usage": body["usage"]})
    yield b"data: [DONE]\n\n"


def _chat_events(body: Json, include_usage: bool, size: int) -> Iterator[bytes]:
    base = _chunk_base(body, "chat.completion.chunk", ("service_tier", "system_fingerprint"))

    def chunk(index: int, delta: Json, finish: Any = None, logprobs: Any = None) -> bytes:
        return _choice_chunk(base, {"index": index, "delta": delta, "logprobs": logprobs,
                                    "finish_reason": finish}, include_usage)

    for position, choice in enumerate(body.get("choices") or ()):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        message = choice.get("message") or {}
        content, refusal = message.get("content"), message.get("refusal")
        first: Json = {"role": message.get("role", "assistant"),
                       "content": "" if isinstance(content, str) else None, "refusal": None}
        yield chunk(index, first)
        logprobs = choice.get("logprobs")
        if isinstance(content, str) and content:
            if logprobs is not None:  # logprobs belong to their text: send them together
                yield chunk(index, {"content": content}, logprobs=logprobs)
            else:
                for piece in _split(content, size):
                    yield chunk(index, {"content": piece})
        if isinstance(refusal, str) and refusal:
            for piece in _split(refusal, size):
                yield chunk(index, {"refusal": piece})
        for k, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            head = {"index": k, "id": call.get("id"), "type": call.get("type", "function"),
                    "function": {"name": function.get("name", ""), "arguments": ""}}
            yield chunk(index, {"tool_calls": [head]})
            for piece in _split(str(function.get("arguments") or ""), size):
                if piece:
                    yield chunk(index, {"tool_calls": [{"index": k,
                                                        "function": {"arguments": piece}}]})
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            yield chunk(index, {"function_call": {"name": legacy.get("name", ""),
                                                  "arguments": ""}})
            for piece in _split(str(legacy.get("arguments") or ""), size):
                if piece:
                    yield chunk(index, {"function_call": {"arguments": piece}})
        extra = {k: v for k, v in message.items()
                 if k not in _CHAT_MESSAGE_STREAMED and v not in (None, [])}
        if extra:  # annotations, audio: sent whole
            yield chunk(index, extra)
        yield chunk(index, {}, finish=choice.get("finish_reason"))
    yield from _usage_and_done(base, body, include_usage)


# -- OpenAI legacy completions ----------------------------------------------------------------


def _completion_events(body: Json, include_usage: bool, size: int) -> Iterator[bytes]:
    base = _chunk_base(body, "text_completion", ("system_fingerprint",))

    def chunk(index: int, text: str, finish: Any = None, logprobs: Any = None) -> bytes:
        return _choice_chunk(base, {"text": text, "index": index, "logprobs": logprobs,
                                    "finish_reason": finish}, include_usage)

    for position, choice in enumerate(body.get("choices") or ()):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        text = str(choice.get("text") or "")
        if choice.get("logprobs") is not None:
            yield chunk(index, text, logprobs=choice["logprobs"])
        else:
            for piece in _split(text, size):
                if piece:
                    yield chunk(index, piece)
        yield chunk(index, "", finish=choice.get("finish_reason"))
    yield from _usage_and_done(base, body, include_usage)


# -- OpenAI Responses -------------------------------------------------------------------------


class _Sequencer:
    """Numbers Responses events in order, as the API does."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, **fields, "sequence_number": self.n}
        self.n += 1
        return _event(kind, obj)


def _responses_events(body: Json, size: int) -> Iterator[bytes]:
    emit = _Sequencer()
    pending = {**body, "status": "in_progress", "output": [], "usage": None}
    for name in ("completed_at", "incomplete_details", "error"):
        if name in pending:
            pending[name] = None
    yield emit("response.created", response=pending)
    yield emit("response.in_progress", response=pending)
    for index, item in enumerate(body.get("output") or ()):
        if isinstance(item, dict):
            yield from _responses_item(emit, index, item, size)
    final = "response.incomplete" if body.get("status") == "incomplete" else "response.completed"
    yield emit(final, response=body)


def _responses_item(emit: _Sequencer, index: int, item: Json, size: int) -> Iterator[bytes]:
    kind, item_id = item.get("type"), item.get("id")
    where = {"item_id": item_id, "output_index": index}
    if kind == "message":
        yield emit("response.output_item.added", output_index=index,
                   item={**item, "status": "in_progress", "content": []})
        for part_index, part in enumerate(item.get("content") or ()):
            yield from _responses_part(emit, where, part_index, part, size)
    elif kind == "function_call":
        arguments = str(item.get("arguments") or "")
        yield emit("response.output_item.added", output_index=index,
                   item={**item, "status": "in_progress", "arguments": ""})
        for piece in _split(arguments, size):
            if piece:
                yield emit("response.function_call_arguments.delta", **where, delta=piece)
        yield emit("response.function_call_arguments.done", **where, name=item.get("name"),
                   arguments=arguments)
    else:  # reasoning and other items: announced and completed whole
        yield emit("response.output_item.added", output_index=index, item=item)
    yield emit("response.output_item.done", output_index=index, item=item)


def _responses_part(emit: _Sequencer, where: Json, part_index: int, part: Any,
                    size: int) -> Iterator[bytes]:
    at = {**where, "content_index": part_index}
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "output_text":
        text = str(part.get("text") or "")
        logprobs = part.get("logprobs") or []
        yield emit("response.content_part.added", **at,
                   part={**part, "text": "", "annotations": [], "logprobs": []})
        if logprobs:
            yield emit("response.output_text.delta", **at, delta=text, logprobs=logprobs)
        else:
            for piece in _split(text, size):
                if piece:
                    yield emit("response.output_text.delta", **at, delta=piece, logprobs=[])
        yield emit("response.output_text.done", **at, text=text, logprobs=logprobs)
    elif kind == "refusal":
        refusal = str(part.get("refusal") or "")
        yield emit("response.content_part.added", **at, part={**part, "refusal": ""})
        for piece in _split(refusal, size):
            if piece:
                yield emit("response.refusal.delta", **at, delta=piece)
        yield emit("response.refusal.done", **at, refusal=refusal)
    else:
        yield emit("response.content_part.added", **at, part=part)
    yield emit("response.content_part.done", **at, part=part)


# -- Anthropic messages -----------------------------------------------------------------------

_DELTA_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                "output_tokens", "server_tool_use")
_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def _messages_events(body: Json, size: int) -> Iterator[bytes]:
    raw_usage = body.get("usage")
    usage: Json = raw_usage if isinstance(raw_usage, dict) else {}
    output_tokens = usage.get("output_tokens") or 0
    start_usage = {**usage, "output_tokens": min(1, output_tokens)}
    start = {**body, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": start_usage}
    yield _event("message_start", {"type": "message_start", "message": start})
    pinged = False
    for index, block in enumerate(body.get("content") or ()):
        if not isinstance(block, dict):
            continue
        yield from _messages_block(index, block, size)
        if not pinged:
            yield _event("ping", {"type": "ping"})
            pinged = True
    if not pinged:
        yield _event("ping", {"type": "ping"})
    delta_usage = {k: usage[k] for k in _DELTA_USAGE if usage.get(k) is not None}
    delta_usage["output_tokens"] = output_tokens
    yield _event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": body.get("stop_reason"),
                  "stop_sequence": body.get("stop_sequence")},
        "usage": delta_usage,
    })
    yield _event("message_stop", {"type": "message_stop"})


def _messages_block(index: int, block: Json, size: int) -> Iterator[bytes]:
    kind = block.get("type")

    def delta(payload: Json) -> bytes:
        return _event("content_block_delta",
                      {"type": "content_block_delta", "index": index, "delta": payload})

    def start(content_block: Json) -> bytes:
        return _event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": content_block})

    if kind == "text":
        citations = block.get("citations")
        head = {**block, "text": ""}
        if citations:
            head["citations"] = []
        yield start(head)
        for citation in citations or ():
            yield delta({"type": "citations_delta", "citation": citation})
        for piece in _split(str(block.get("text") or ""), size):
            if piece:
                yield delta({"type": "text_delta", "text": piece})
    elif kind in _TOOL_BLOCKS:
        yield start({**block, "input": {}})
        arguments = orjson.dumps(block.get("input") or {}).decode()
        for piece in _split(arguments, size):
            yield delta({"type": "input_json_delta", "partial_json": piece})
    elif kind == "thinking":
        yield start({**block, "thinking": "", "signature": ""})
        for piece in _split(str(block.get("thinking") or ""), size):
            if piece:
                yield delta({"type": "thinking_delta", "thinking": piece})
        if block.get("signature"):
            yield delta({"type": "signature_delta", "signature": block["signature"]})
    else:  # redacted thinking, tool results and other blocks arrive whole
        yield start(block)
    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
