"""Rebuild the non-streamed answer from the events of a streamed one.

A streamed answer is cached in the form a non-streamed request would have received, so
one entry serves both kinds of client. Each assembler takes the upstream's events one at a
time (keeping only the answer built so far, not the events) and yields the body only when
the stream demonstrably finished: OpenAI's ``[DONE]`` after a finish reason for every
choice, the Responses API's final ``response.completed`` / ``response.incomplete``,
Anthropic's ``message_stop``, a ``finishReason`` for every Gemini candidate
(``cache/gemini.py``). A stream that broke off, carried an error, or holds
something this module cannot rebuild exactly (audio) yields None: it is not cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from tokenstile.cache.gemini import GeminiAssembler
from tokenstile.providers.sse import EventSplitter, event_fields, json_object
from tokenstile.types import ApiKind, WireFormat

Json = dict[str, Any]


class StreamAssembler(Protocol):
    def feed(self, event: bytes) -> None:
        """Take one whole SSE event (as relayed, trailing blank line optional)."""
        ...

    def result(self) -> bytes | None:
        """The non-streamed body, or None if the stream did not finish cleanly."""
        ...


def _concat_lists(target: Json, source: Any) -> None:
    """Append the list fields of a streamed ``logprobs`` object to the accumulated one."""
    if not isinstance(source, dict):
        return
    for name, value in source.items():
        if isinstance(value, list):
            existing = target.get(name)
            target[name] = (existing if isinstance(existing, list) else []) + value
        elif name not in target:
            target[name] = value


# -- OpenAI chat completions ----------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    id: str | None = None
    type: str | None = None
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    def function(self) -> Json:
        return {"name": "".join(self.name), "arguments": "".join(self.arguments)}


@dataclass(slots=True)
class _Choice:
    role: str | None = None
    content: list[str] | None = None
    refusal: list[str] | None = None
    calls: dict[int, _Call] = field(default_factory=dict)
    function_call: _Call | None = None
    annotations: list[Any] = field(default_factory=list)
    logprobs: Json | None = None
    finish_reason: str | None = None
    text: list[str] = field(default_factory=list)  # legacy completions


class _OpenAIAssembler:
    """Shared by chat completions and legacy completions: ``data: {chunk}`` … ``[DONE]``."""

    _HEAD = ("id", "object", "created", "model")
    _TAIL = ("service_tier", "system_fingerprint")

    def __init__(self) -> None:
        self.fields: Json = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: Any = None
        self.done = False
        self.failed = False

    def feed(self, event: bytes) -> None:
        if self.failed or self.done:
            return
        _, data = event_fields(event)
        if not data:
            return
        if data.strip() == b"[DONE]":
            self.done = True
            return
        chunk = json_object(data)
        if chunk is None or "error" in chunk:
            self.failed = True
            return
        for name in (*self._HEAD, *self._TAIL):
            value = chunk.get(name)
            if value is not None:
                self.fields[name] = value
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for raw in choices:
            if not isinstance(raw, dict):
                self.failed = True
                return
            index = raw.get("index", 0)
            choice = self.choices.setdefault(index if isinstance(index, int) else 0, _Choice())
            if raw.get("finish_reason") is not None:
                choice.finish_reason = raw["finish_reason"]
            if raw.get("logprobs") is not None:
                if choice.logprobs is None:
                    choice.logprobs = {}
                _concat_lists(choice.logprobs, raw["logprobs"])
            self._choice(choice, raw)

    def _choice(self, choice: _Choice, raw: Json) -> None:
        delta = raw.get("delta")
        if not isinstance(delta, dict):
            return
        if delta.get("audio") is not None:
            self.failed = True  # audio chunks cannot be rebuilt into the non-streamed form
            return
        if isinstance(delta.get("role"), str):
            choice.role = delta["role"]
        content = delta.get("content")
        if isinstance(content, str):
            if choice.content is None:
                choice.content = []
            choice.content.append(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            if choice.refusal is None:
                choice.refusal = []
            choice.refusal.append(refusal)
        annotations = delta.get("annotations")
        if isinstance(annotations, list):
            choice.annotations.extend(annotations)
        for item in delta.get("tool_calls") or ():
            if isinstance(item, dict):
                index = item.get("index", len(choice.calls))
                _merge_call(choice.calls.setdefault(index, _Call()), item)
        if isinstance(delta.get("function_call"), dict):
            choice.function_call = choice.function_call or _Call()
            _merge_call(choice.function_call, {"function": delta["function_call"]})

    def _complete(self) -> bool:
        return (self.done and not self.failed and bool(self.choices) and "id" in self.fields
                and all(c.finish_reason is not None for c in self.choices.values()))

    def _body(self, obj: str, choices: list[Json]) -> bytes:
        body: Json = {name: self.fields.get(name) for name in self._HEAD}
        body["object"] = obj
        body["choices"] = choices
        for name in self._TAIL:
            if name in self.fields:
                body[name] = self.fields[name]
        if self.usage is not None:
            body["usage"] = self.usage
        return orjson.dumps(body)


def _merge_call(call: _Call, item: Json) -> None:
    if isinstance(item.get("id"), str) and not call.id:
        call.id = item["id"]
    if isinstance(item.get("type"), str) and not call.type:
        call.type = item["type"]
    function = item.get("function")
    if isinstance(function, dict):
        if isinstance(function.get("name"), str):
            call.name.append(function["name"])
        if isinstance(function.get("arguments"), str):
            call.arguments.append(function["arguments"])


class ChatAssembler(_OpenAIAssembler):
    def result(self) -> bytes | None:
        if not self._complete():
            return None
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            text = "".join(c.content) if c.content is not None else None
            if text == "" and (c.calls or c.function_call):
                text = None
            message: Json = {
                "role": c.role or "assistant",
                "content": text,
                "refusal": "".join(c.refusal) if c.refusal else None,
                "annotations": c.annotations,
            }
            if c.calls:
                message["tool_calls"] = [
                    {"id": call.id, "type": call.type or "function", "function": call.function()}
                    for _, call in sorted(c.calls.items())
                ]
            if c.function_call is not None:
                message["function_call"] = c.function_call.function()
            choices.append({"index": index, "message": message, "logprobs": c.logprobs,
                            "finish_reason": c.finish_reason})
        return self._body("chat.completion", choices)


class CompletionsAssembler(_OpenAIAssembler):
    def _choice(self, choice: _Choice, raw: Json) -> None:
        text = raw.get("text")
        if isinstance(text, str):
            choice.text.append(text)

    def result(self) -> bytes | None:
        if not self._complete():
            return None
        choices = [
            {"text": "".join(c.text), "index": index, "logprobs": c.logprobs,
             "finish_reason": c.finish_reason}
            for index, c in sorted(self.choices.items())
        ]
        return self._body("text_completion", choices)


# -- OpenAI Responses -------------------------------------------------------------------------

_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete"})
_RESPONSES_FAILED = frozenset({"response.failed", "error"})


class ResponsesAssembler:
    """The final event carries the whole response object: everything else can be skipped."""

    def __init__(self) -> None:
        self.response: Json | None = None
        self.failed = False

    def feed(self, event: bytes) -> None:
        if self.failed:
            return
        name, data = event_fields(event)
        if name is not None and name not in _RESPONSES_FINAL and name not in _RESPONSES_FAILED:
            return  # deltas and the like: no need to parse them
        payload = json_object(data)
        kind = payload.get("type") if payload is not None else name
        if kind in _RESPONSES_FAILED:
            self.failed = True
        elif kind in _RESPONSES_FINAL and payload is not None:
            response = payload.get("response")
            if isinstance(response, dict):
                self.response = response

    def result(self) -> bytes | None:
        if self.failed or self.response is None:
            return None
        return orjson.dumps(self.response)


# -- Anthropic messages -----------------------------------------------------------------------


# delta type -> (field carrying the piece, block field it builds)
_ANTHROPIC_STRINGS: dict[str, tuple[str, str]] = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
    "input_json_delta": ("partial_json", "input"),
}


class MessagesAssembler:
    """``message_start`` gives the skeleton; blocks fill in; ``message_delta`` ends it.

    Streamed strings are kept as lists of pieces and joined once at the end (joining as
    they arrive would copy the text once per delta).
    """

    def __init__(self) -> None:
        self.message: Json | None = None
        self.blocks: dict[int, Json] = {}
        self.pieces: dict[tuple[int, str], list[str]] = {}
        self.stopped = False
        self.failed = False

    def feed(self, event: bytes) -> None:
        if self.failed or self.stopped:
            return
        name, data = event_fields(event)
        if name == "ping" or (name is None and not data):
            return
        payload = json_object(data)
        kind = payload.get("type") if payload is not None else name
        if payload is None or kind == "error":
            self.failed = True
        elif kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self.message = dict(message)
        elif self.message is None:
            self.failed = True  # anything before message_start is not a stream we know
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict):
                self.blocks[_index(payload)] = dict(block)
        elif kind == "content_block_delta":
            self._delta(_index(payload), payload.get("delta"))
        elif kind == "message_delta":
            self._message_delta(payload)
        elif kind == "message_stop":
            self.stopped = True

    def _delta(self, index: int, delta: Any) -> None:
        block = self.blocks.get(index)
        if block is None or not isinstance(delta, dict):
            self.failed = True
            return
        kind = delta.get("type")
        if kind in _ANTHROPIC_STRINGS:
            source, target = _ANTHROPIC_STRINGS[kind]
            piece = delta.get(source)
            if isinstance(piece, str):
                self.pieces.setdefault((index, target), []).append(piece)
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature")
        elif kind == "citations_delta":
            block["citations"] = [*(block.get("citations") or []), delta.get("citation")]
        else:
            self.failed = True

    def _message_delta(self, payload: Json) -> None:
        assert self.message is not None
        delta = payload.get("delta")
        if isinstance(delta, dict):
            for name, value in delta.items():
                if value is not None or name in self.message:
                    self.message[name] = value
        usage = payload.get("usage")
        if isinstance(usage, dict):
            merged = dict(self.message.get("usage") or {})
            merged.update({k: v for k, v in usage.items() if v is not None})
            self.message["usage"] = merged

    def result(self) -> bytes | None:
        if self.failed or not self.stopped or self.message is None:
            return None
        blocks = {index: dict(block) for index, block in self.blocks.items()}
        for (index, target), pieces in self.pieces.items():
            block = blocks[index]
            joined = "".join(pieces)
            if target != "input":
                block[target] = str(block.get(target) or "") + joined
                continue
            try:
                block["input"] = orjson.loads(joined) if joined else {}
            except orjson.JSONDecodeError:
                return None
        message = dict(self.message)
        message["content"] = [blocks[i] for i in sorted(blocks)]
        return orjson.dumps(message)


def _index(payload: Json) -> int:
    index = payload.get("index")
    return index if isinstance(index, int) else 0


# -- entry points -----------------------------------------------------------------------------


def assembler_for(api: ApiKind, wire: WireFormat) -> StreamAssembler | None:
    """An incremental assembler for streams of this kind; None if it never streams."""
    if wire == "anthropic":
        return MessagesAssembler() if api == "messages" else None
    if wire == "gemini":
        return GeminiAssembler() if api == "generate_content" else None
    if api == "chat":
        return ChatAssembler()
    if api == "completions":
        return CompletionsAssembler()
    if api == "responses":
        return ResponsesAssembler()
    return None


def assemble_from_stream(api: ApiKind, wire: WireFormat, events: list[bytes]) -> bytes | None:
    """The non-streamed body equivalent to a complete stream, or None.

    ``events`` are the upstream's SSE events in order; arbitrary byte chunks of the stream
    work too (they are split at event boundaries again).
    """
    assembler = assembler_for(api, wire)
    if assembler is None:
        return None
    splitter = EventSplitter()
    for event in splitter.feed(b"".join(events)):
        assembler.feed(event)
    tail = splitter.rest()
    if tail.strip():
        assembler.feed(tail)
    return assembler.result()
