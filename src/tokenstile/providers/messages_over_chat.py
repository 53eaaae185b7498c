"""Anthropic Messages ⇄ OpenAI chat completions, so an ``anthropic`` SDK client can use a
model served by an OpenAI-compatible upstream (the mirror of ``translate``).

Pure functions over JSON-like values, no I/O. Request translation raises only
``GatewayError`` (400, naming the offending field); response and stream translation never
raise: an odd upstream answer is translated as far as it goes.

Choices where the two APIs differ:

- ``system`` (a string or text blocks) becomes the first message, role ``system``.
- Content blocks: ``text`` → text parts; ``image`` (base64 or URL) → ``image_url`` parts;
  a base64 PDF ``document`` → a ``file`` part; ``tool_use`` (assistant) → ``tool_calls``;
  ``tool_result`` (user) → ``tool`` messages, placed right after the assistant turn that
  called the tools (before the rest of that user turn). ``thinking`` blocks are dropped:
  chat completions have no field to send them back in.
- Server tools (web search, code execution…), ``mcp_servers`` and ``container`` run on
  Anthropic's side and are refused with 400; client tools become function tools.
- ``max_tokens`` becomes ``max_completion_tokens`` for the reasoning models (o-series,
  gpt-5) and ``max_tokens`` for the others; ``top_k`` (no OpenAI equivalent) and
  ``thinking`` (OpenAI's reasoning models take an effort, not a budget) are dropped;
  ``stop_sequences`` becomes ``stop``; ``metadata.user_id`` becomes ``user``; a JSON
  schema ``output_config.format`` becomes a strict ``json_schema`` response format.
- Streams always ask for usage (``stream_options.include_usage``): the gateway bills from it.
- Answers: ``finish_reason`` stop → ``end_turn``, length → ``max_tokens``, tool_calls →
  ``tool_use``, content_filter → ``refusal``; OpenAI's ``prompt_tokens`` (cache reads
  included) become Anthropic's ``input_tokens`` (without them) plus
  ``cache_read_input_tokens``.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenstile import tokens
from tokenstile.errors import bad_request
from tokenstile.limits.caps import output_cap_field
from tokenstile.providers.answers import AnswerText, WatchesText, chat_message_text, dumps_text
from tokenstile.providers.base import each_tool, optional_bool, optional_int, require_str
from tokenstile.providers.counts import service_tier
from tokenstile.providers.mapping import (
    TranslatedBody,
    anthropic_usage,
    message_id,
    openai_error_to_anthropic,
    stop_reason,
    tool_input,
)
from tokenstile.providers.openai import usage_from_openai
from tokenstile.providers.sse import event_fields, json_object, named_event
from tokenstile.types import ApiKind, CanonicalRequest, Usage

_REFUSED_FIELDS: dict[str, str] = {
    "mcp_servers": "MCP servers run on Anthropic's side and cannot be used with a model "
                   "served by an OpenAI-compatible upstream",
    "container": "code-execution containers run on Anthropic's side and cannot be used with "
                 "a model served by an OpenAI-compatible upstream",
}


# --- requests -----------------------------------------------------------------------------


def _text_of(blocks: Any, where: str) -> str:
    """A string, or text blocks, as one string (system prompts, tool results)."""
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise bad_request(f"'{where}' must be a string or an array of blocks", param=where)
    texts: list[str] = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind not in ("image", "document", "search_result"):
            raise bad_request(f"'{where}[{i}]' must be a text block", param=f"{where}[{i}]")
    return "\n".join(texts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise bad_request(f"'{where}.source' must be a base64 or URL image source",
                          param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64" and \
            source.get("media_type") == "application/pdf":
        name = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {"type": "file", "file": {
            "filename": name, "file_data": f"data:application/pdf;base64,{source.get('data')}"}}
    if isinstance(source, dict) and source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    raise bad_request(f"'{where}' must be a base64 PDF or a text document to be sent to an "
                      "OpenAI-compatible model", param=where)


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"'{where}.tool_use_id' must be a non-empty string",
                          param=f"{where}.tool_use_id")
    text = _text_of(block.get("content"), f"{where}.content")
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _user_turn(content: Any, where: str) -> list[dict[str, Any]]:
    """One user turn: its tool results first (as ``tool`` messages), then its content."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or an array of content "
                          "blocks", param=f"{where}.content")
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(block, dict) or not isinstance(kind, str):
            raise bad_request(f"'{at}' must be a content block object", param=at)
        if kind == "text":
            if isinstance(block.get("text"), str) and block["text"]:
                parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "document":
            parts.append(_document_part(block, at))
        elif kind == "tool_result":
            results.append(_tool_result(block, at))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise bad_request(f"'{at}' has type {kind!r}, which cannot be sent to an "
                              "OpenAI-compatible model", param=at)
    out = results
    if parts:
        only_text = all(part["type"] == "text" for part in parts)
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)
                    if only_text else parts})
    return out


def _assistant_turn(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or an array of content "
                          "blocks", param=f"{where}.content")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block, dict):
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use" and isinstance(block, dict):
            name, call_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise bad_request(f"'{at}' must have a string 'id' and 'name'", param=at)
            calls.append({"id": call_id, "type": "function", "function": {
                "name": name, "arguments": dumps_text(block.get("input") or {})}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise bad_request(f"'{at}' has type {kind!r}, which cannot be sent to an "
                              "OpenAI-compatible model", param=at)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(value: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for at, tool in each_tool(value):
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise bad_request(f"'{at}' is the server tool {kind!r}, which runs on Anthropic's "
                              "side; an OpenAI-compatible model can only call client tools",
                              param=f"{at}.type", code="unsupported_parameter")
        name = require_str(tool, "name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad_request(f"'{at}.input_schema' must be a JSON schema object",
                              param=f"{at}.input_schema")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if tool.get("strict") is True:
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(value: Any, out: dict[str, Any]) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("auto", "none"):
        out["tool_choice"] = kind
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool" and isinstance(value, dict) and isinstance(value.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": value["name"]}}
    else:
        raise bad_request("'tool_choice' must be auto, any, tool (with a name) or none",
                          param="tool_choice")
    if isinstance(value, dict) and value.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def messages_to_chat(body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """An Anthropic Messages request body as an OpenAI chat completions request body."""
    model = require_str(body, "model")
    for field, reason in _REFUSED_FIELDS.items():
        if body.get(field) is not None:
            raise bad_request(reason, param=field, code="unsupported_parameter")
    messages: list[dict[str, Any]] = []
    system = _text_of(body.get("system"), "system")
    if system:
        messages.append({"role": "system", "content": system})
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role == "user" and isinstance(turn, dict):
            messages.extend(_user_turn(turn.get("content"), where))
        elif role == "assistant" and isinstance(turn, dict):
            messages.append(_assistant_turn(turn.get("content"), where))
        else:
            raise bad_request(f"'{where}.role' must be 'user' or 'assistant'",
                              param=f"{where}.role")
    cap = optional_int(body, "max_tokens", minimum=1) or default_max_tokens
    probe = CanonicalRequest(api="chat", wire="openai", model=model, body={})
    out: dict[str, Any] = {"model": model, "messages": messages,
                           output_cap_field(probe): cap}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        _tool_choice(body.get("tool_choice"), out)
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    stop = body.get("stop_sequences")
    if isinstance(stop, list) and stop:
        out["stop"] = [s for s in stop if isinstance(s, str)][:4]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and \
            isinstance(fmt.get("schema"), dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": fmt["schema"], "strict": True}}
    if optional_bool(body, "stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- answers ------------------------------------------------------------------------------


def _answer_input(arguments: Any) -> dict[str, Any]:
    """An answer's tool-call arguments as a ``tool_use`` input; arguments that are neither
    text nor an object count as none."""
    return tool_input(arguments if isinstance(arguments, str | dict) else None)


def chat_to_message(resp: Any, model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic Messages response."""
    resp = resp if isinstance(resp, dict) else {}
    choices = resp.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    choice: dict[str, Any] = first if isinstance(first, dict) else {}
    found = choice.get("message")
    message: dict[str, Any] = found if isinstance(found, dict) else {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    refusal = message.get("refusal")
    for piece in (text, refusal):
        if isinstance(piece, str) and piece:
            content.append({"type": "text", "text": piece})
    calls = message.get("tool_calls")
    for i, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id")
        content.append({"type": "tool_use",
                        "id": call_id if isinstance(call_id, str) else f"toolu_{i}",
                        "name": str(function.get("name") or ""),
                        "input": _answer_input(function.get("arguments"))})
    served = resp.get("model")
    return {
        "id": message_id(resp.get("id")), "type": "message", "role": "assistant",
        "model": served if isinstance(served, str) and served else model,
        "content": content, "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None, "usage": anthropic_usage(usage_from_openai(resp.get("usage"))),
    }


# --- streams ------------------------------------------------------------------------------


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return named_event(name, {"type": name, **payload})


class ChunkTranslator(WatchesText):
    """chat.completion.chunk SSE events in, Anthropic Messages stream events out.

    Also a ``StreamObserver``: ``usage`` is the upstream's final usage chunk (always asked
    for), ``output_text`` what was generated, for counting when the stream broke off first.
    """

    __slots__ = ("_block", "_done", "_finish", "_id", "_index", "_model", "_started",
                 "_text", "_tier", "_tools", "usage")

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = message_id(None)
        self._text = AnswerText()
        self._started = False
        self._done = False
        self._block: str | None = None  # "text" or "tool:<chat index>" of the open block
        self._index = -1
        self._tools: dict[int, str] = {}
        self._finish: str | None = None
        self._tier: str | None = None
        self.usage: Usage | None = None

    def usage_is_final(self) -> bool:
        return self.usage is not None

    def on_event(self, event: bytes) -> bytes | None:
        return self.feed(event) or None

    def feed(self, event: bytes) -> bytes:
        """Translate one complete chat SSE event (b"" when there is nothing to send)."""
        if self._done:
            return b""
        _, data = event_fields(event)
        if data.strip() == b"[DONE]":
            return self._end()
        chunk = json_object(data)
        if chunk is None:
            return b""
        if isinstance(chunk.get("error"), dict):
            self._done = True
            error = chunk["error"]
            return _event("error", {"error": {
                "type": "api_error", "message": str(error.get("message") or "upstream error")}})
        out = self._start(chunk)
        tier = chunk.get("service_tier")
        if tier is not None:
            self._tier = service_tier(tier) or self._tier
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out += self._delta(choice.get("delta"))
                if isinstance(choice.get("finish_reason"), str):
                    self._finish = choice["finish_reason"]
        if chunk.get("usage") is not None:
            self.usage = usage_from_openai(chunk["usage"])
            if self.usage is not None:
                self.usage.service_tier = self._tier
        return out

    def _start(self, chunk: dict[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        self._id = message_id(chunk.get("id"))
        return _event("message_start", {"message": {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": anthropic_usage(None)}})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._block = kind
        return out + _event("content_block_start", {"index": self._index,
                                                    "content_block": block})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        return _event("content_block_stop", {"index": self._index})

    def _delta(self, delta: Any) -> bytes:
        if not isinstance(delta, dict):
            return b""
        chat_message_text(delta, self._text)
        out = b""
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._block != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out += _event("content_block_delta", {"index": self._index, "delta": {
                "type": "text_delta", "text": text}})
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if not isinstance(call, dict):
                continue
            position = call.get("index", 0)
            named = call.get("function")
            function: dict[str, Any] = named if isinstance(named, dict) else {}
            key = f"tool:{position}"
            if self._block != key and position not in self._tools:
                call_id = call.get("id")
                self._tools[position] = call_id if isinstance(call_id, str) else \
                    f"toolu_{position}"
                out += self._open(key, {"type": "tool_use", "id": self._tools[position],
                                        "name": str(function.get("name") or ""),
                                        "input": {}})
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments and self._block == key:
                out += _event("content_block_delta", {"index": self._index, "delta": {
                    "type": "input_json_delta", "partial_json": arguments}})
        return out

    def _end(self) -> bytes:
        out = self._start({})
        self._done = True
        out += self._close()
        return out + _event("message_delta", {
            "delta": {"stop_reason": stop_reason(self._finish), "stop_sequence": None},
            "usage": anthropic_usage(self.usage)}) + _event("message_stop", {})


# --- the gateway's bridge -----------------------------------------------------------------


class MessagesOverChat(TranslatedBody):
    """An Anthropic Messages request served by an OpenAI-compatible upstream (a ``Bridge``),
    its chat translation following the request's body (``TranslatedBody``): translated when
    the bridge is built, so an untranslatable request is refused before anything is
    reserved, and again whenever a later stage (admission, a fallback) replaces the body.
    """

    upstream_api: ApiKind = "chat"

    __slots__ = ()

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return messages_to_chat(body, self._default_cap)

    def count_input(self) -> int:
        body = self._translated
        return tokens.count_chat(body["model"], body["messages"], body.get("tools"),
                                 response_format=body.get("response_format"))

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        return self.follow(req.body)

    def usage_from_body(self, payload: Any) -> Usage | None:
        if not isinstance(payload, dict):
            return None
        usage = usage_from_openai(payload.get("usage"))
        if usage is not None:
            usage.service_tier = service_tier(payload.get("service_tier"))
        return usage

    def response_body(self, payload: bytes, parsed: Any) -> tuple[bytes, Any]:
        if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
            return payload, parsed
        message = chat_to_message(parsed, self.model)
        return orjson.dumps(message), message

    def error_body(self, status: int, payload: bytes) -> bytes:
        return openai_error_to_anthropic(status, payload)

    def observer(self, req: CanonicalRequest) -> ChunkTranslator:
        return ChunkTranslator(self.model)
