"""OpenAI chat completions ⇄ Anthropic Messages, so an ``openai`` SDK client can use Claude.

Pure functions over JSON-like values, no I/O. Request translation raises only
``GatewayError`` (400, naming the offending field); response and stream translation never
raise: an odd upstream answer is translated as far as it goes.

Choices where the two APIs differ:

- ``n`` > 1, ``logprobs``, audio output, legacy ``functions``/``function_call``, non-function
  tools and ``web_search_options`` are refused with 400: Claude cannot honour them and a
  silent downgrade would hand the client something it did not ask for.
- ``response_format``: ``json_schema`` becomes Anthropic's native structured outputs
  (``output_config.format``), which constrain decoding to the schema; pass
  ``structured_outputs=False`` for models without it, and the schema becomes a system
  instruction instead. ``json_object`` (any JSON, no schema) has no Anthropic equivalent
  and is always a system instruction: a best effort, not a guarantee.
- ``max_tokens`` is required by Anthropic; when the client names none, the caller's
  ``default_max_tokens`` is used (the gateway reserves budget against it).
- Sampling knobs (``temperature``, ``top_p``, ``top_k``) are validated and then dropped:
  current Claude models refuse non-default values with a 400 and Anthropic's current API
  has removed them, while OpenAI clients set them out of habit. ``sampling=True`` forwards
  them for older models that honour them, ``temperature`` clamped from OpenAI's 0–2 to
  Anthropic's 0–1 (not scaled, so the shared default of 1 keeps its meaning).
- System and developer messages, wherever they appear, are joined into ``system``.
- Consecutive turns of one role are merged (Anthropic requires alternation), tool results
  first within a user turn; empty and whitespace-only text is dropped (Anthropic rejects it).
- Knobs Claude lacks (``seed``, ``frequency_penalty``, ``presence_penalty``,
  ``logit_bias``, ``reasoning_effort``…) and OpenAI-only bookkeeping (``store``,
  ``metadata``, ``service_tier``, ``prediction``, ``stream_options``) are dropped.
  Anthropic's ``thinking`` (sent through the SDK's ``extra_body``) passes through.
- Thinking blocks in responses are not surfaced: chat completions have no field for them.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from tokenstile import tokens
from tokenstile.errors import bad_request
from tokenstile.providers.answers import dumps_text
from tokenstile.providers.anthropic import (
    AnthropicStreamObserver,
    UsageTracker,
    delta_text,
    load_event,
    output_format,
    usage_from_anthropic,
)
from tokenstile.providers.base import (
    ObserverWrapper,
    each_message,
    each_tool,
    optional_bool,
    optional_int,
    optional_str,
    require_messages,
    require_str,
)
from tokenstile.providers.counts import wants_usage_chunk
from tokenstile.providers.mapping import (
    DONE,
    ChatChunks,
    TranslatedBody,
    anthropic_error,
    anthropic_error_to_openai,
    chat_cap,
    chat_completion,
    chat_id,
    chat_message,
    chat_tool_call,
    finish_reason,
    tool_input,
)
from tokenstile.providers.sse import data_event
from tokenstile.types import ApiKind, CanonicalRequest, Usage

DEFAULT_MAX_TOKENS = 4096

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no Markdown code fences, "
    "no text before or after it."
)
JSON_SCHEMA_INSTRUCTION = (
    "Respond with a single valid JSON value that conforms to the JSON schema below and "
    "nothing else: no Markdown code fences, no text before or after it.\nSchema:\n"
)

_REFUSED_FIELDS: dict[str, str] = {
    "functions": "legacy 'functions' cannot be sent to Claude; use 'tools'",
    "function_call": "legacy 'function_call' cannot be sent to Claude; use 'tool_choice'",
    "audio": "audio output is not available from Claude models",
    "web_search_options": "'web_search_options' is not available for Claude models through "
                          "chat completions",
}


# --- requests -----------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _image_block(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise bad_request(f"'{where}.image_url.url' must be a non-empty string",
                          param=f"{where}.image_url")
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        fields = header.split(";")
        media_type = fields[0].strip().lower()
        if media_type == "image/jpg":
            media_type = "image/jpeg"
        if not comma or "base64" not in fields[1:]:
            raise bad_request(f"'{where}.image_url.url' must be a base64 data URL "
                              "(data:image/png;base64,...) or an http(s) URL",
                              param=f"{where}.image_url")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise bad_request(f"'{where}.image_url.url' has media type {media_type!r}; Claude "
                              f"accepts {', '.join(sorted(IMAGE_MEDIA_TYPES))}",
                              param=f"{where}.image_url")
        return {"type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise bad_request(f"'{where}.image_url.url' must be a base64 data URL or an http(s) URL",
                      param=f"{where}.image_url")


def _file_block(file: Any, where: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if isinstance(data_url, str) and data_url.startswith("data:"):
        header, comma, data = data_url[5:].partition(",")
        fields = header.split(";")
        if comma and fields[0].strip().lower() == "application/pdf" and "base64" in fields[1:]:
            return {"type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf",
                               "data": data}}
    raise bad_request(f"'{where}.file' must carry a PDF as a base64 data URL in 'file_data'; "
                      "OpenAI file ids cannot be sent to Claude", param=f"{where}.file")


def _text_block(text: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(text, str):
        raise bad_request(f"'{where}' must be a string", param=where)
    return [{"type": "text", "text": text}] if text.strip() else []


def _content_blocks(content: Any, where: str, *, media: bool) -> list[dict[str, Any]]:
    """Chat content (a string or parts) as Anthropic blocks; ``media`` allows images/files."""
    if content is None:
        return []
    if isinstance(content, str):
        return _text_block(content, f"{where}.content")
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or an array of content parts",
                          param=f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or not isinstance(kind, str):
            raise bad_request(f"'{at}' must be an object with a 'type'", param=at)
        if kind == "text":
            blocks += _text_block(part.get("text"), f"{at}.text")
        elif kind == "refusal":
            blocks += _text_block(part.get("refusal"), f"{at}.refusal")
        elif media and kind == "image_url":
            image = part.get("image_url")
            blocks.append(_image_block(image.get("url") if isinstance(image, dict) else image,
                                       at))
        elif media and kind == "file":
            blocks.append(_file_block(part.get("file"), at))
        else:
            raise bad_request(f"'{at}' has type {kind!r}, which cannot be sent to Claude here",
                              param=at)
    return blocks


def _plain_text(content: Any, where: str) -> str:
    """Text-only content (system, developer, tool results) as one string."""
    blocks = _content_blocks(content, where, media=False)
    return "\n".join(block["text"] for block in blocks)


def _tool_use_blocks(tool_calls: Any, where: str) -> list[dict[str, Any]]:
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, list):
        raise bad_request(f"'{where}.tool_calls' must be an array", param=f"{where}.tool_calls")
    blocks: list[dict[str, Any]] = []
    for k, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise bad_request(f"'{at}' must be an object", param=at)
        call_id = call.get("id")
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(call_id, str) or not call_id:
            raise bad_request(f"'{at}.id' must be a non-empty string", param=f"{at}.id")
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise bad_request(f"'{at}.function.name' must be a non-empty string",
                              param=f"{at}.function")
        blocks.append({"type": "tool_use", "id": call_id, "name": name,
                       "input": tool_input(function.get("arguments"))})
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"'{where}.tool_call_id' must be a non-empty string",
                          param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    text = _plain_text(message.get("content"), where)
    if text:
        block["content"] = text
    return block


def _turns(body: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[dict[str, Any]]]]]:
    """System texts and alternating (role, blocks) turns of the request's ``messages``."""
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for where, message in each_message(require_messages(body)):
        role = message.get("role")
        if role in ("system", "developer"):
            text = _plain_text(message.get("content"), where)
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _content_blocks(message.get("content"), where, media=True)
            role_out = "user"
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"), where, media=False)
            blocks += _tool_use_blocks(message.get("tool_calls"), where)
            if message.get("function_call") is not None:
                raise bad_request(f"'{where}.function_call' (legacy) cannot be sent to Claude; "
                                  "use 'tool_calls'", param=f"{where}.function_call")
            role_out = "assistant"
        elif role == "tool":
            blocks = [_tool_result_block(message, where)]
            role_out = "user"
        else:
            raise bad_request(f"'{where}.role' must be one of system, developer, user, "
                              f"assistant, tool; got {role!r}", param=f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1][0] == role_out:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role_out, blocks))
    return system, turns


def _message_out(role: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    if role == "user":
        # Tool results must open the user turn that answers a tool call.
        blocks = ([b for b in blocks if b["type"] == "tool_result"]
                  + [b for b in blocks if b["type"] != "tool_result"])
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": role, "content": blocks[0]["text"]}
    return {"role": role, "content": blocks}


def _tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for at, tool in each_tool(tools):
        if tool.get("type", "function") != "function":
            raise bad_request(f"'{at}' has type {tool.get('type')!r}; only function tools "
                              "can be sent to Claude", param=f"{at}.type")
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise bad_request(f"'{at}.function.name' must be a non-empty string",
                              param=f"{at}.function")
        schema = function.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        elif not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise bad_request(f"'{at}.function.parameters' must be a JSON schema of type "
                              "'object'", param=f"{at}.function.parameters")
        elif "type" not in schema:
            schema = {"type": "object", **schema}
        converted: dict[str, Any] = {"name": name, "input_schema": schema}
        description = function.get("description")
        if isinstance(description, str) and description:
            converted["description"] = description
        if function.get("strict") is True:
            converted["strict"] = True
        out.append(converted)
    return out


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    converted: dict[str, Any] | None
    if choice is None:
        converted = None
    elif choice in ("auto", "none"):
        converted = {"type": choice}
    elif choice == "required":
        converted = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise bad_request("'tool_choice.function.name' must be a non-empty string",
                              param="tool_choice")
        converted = {"type": "tool", "name": name}
    else:
        raise bad_request("'tool_choice' must be 'auto', 'none', 'required' or "
                          '{"type": "function", "function": {"name": ...}}',
                          param="tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    if parallel is False:
        converted = converted or {"type": "auto"}
        if converted["type"] != "none":
            converted["disable_parallel_tool_use"] = True
    return converted


def _response_format(body: dict[str, Any], structured_outputs: bool
                     ) -> tuple[str | None, dict[str, Any] | None]:
    """An extra system instruction, or a native ``output_config.format``."""
    value = body.get("response_format")
    if value is None:
        return None, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None, None
    if kind == "json_object":
        return JSON_OBJECT_INSTRUCTION, None
    if kind == "json_schema":
        spec = value.get("json_schema") if isinstance(value, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request("'response_format.json_schema.schema' must be an object",
                              param="response_format")
        if structured_outputs:
            return None, {"type": "json_schema", "schema": schema}
        return JSON_SCHEMA_INSTRUCTION + dumps_text(schema), None
    raise bad_request("'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                      param="response_format")


def _stop_sequences(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value] if value else None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item for item in value if item] or None
    raise bad_request("'stop' must be a string or an array of strings", param="stop")


def _number(body: dict[str, Any], field: str, high: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if not _is_number(value) or not 0 <= value <= high:
        raise bad_request(f"'{field}' must be a number between 0 and {high:g}", param=field)
    return float(value)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for field, reason in _REFUSED_FIELDS.items():
        if body.get(field) is not None:
            raise bad_request(reason, param=field, code="unsupported_parameter")
    n = optional_int(body, "n", minimum=1)
    if n is not None and n > 1:
        raise bad_request("'n' must be 1 for Claude models: Anthropic generates one choice "
                          "per request (send several requests instead)", param="n",
                          code="unsupported_parameter")
    if body.get("logprobs") is True or body.get("top_logprobs") is not None:
        raise bad_request("log probabilities are not available from Claude models",
                          param="logprobs", code="unsupported_parameter")
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise bad_request("Claude models answer with text only", param="modalities",
                          code="unsupported_parameter")


def chat_to_messages(
    body: dict[str, Any],
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    *,
    structured_outputs: bool = True,
    sampling: bool = False,
) -> dict[str, Any]:
    """An OpenAI chat completions request body as an Anthropic Messages request body.

    ``structured_outputs`` sends ``json_schema`` response formats as Anthropic's native
    ``output_config.format`` (else as an instruction); ``sampling`` forwards temperature,
    top_p and top_k, which current Claude models refuse.
    """
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    model = require_str(body, "model")
    _refuse_unsupported(body)
    system, turns = _turns(body)
    if not turns:
        raise bad_request("'messages' has no user or assistant content to send",
                          param="messages")
    last_role, last_blocks = turns[-1]
    if last_role == "assistant" and last_blocks[-1]["type"] == "text":
        # A prefilled final assistant turn may not end in whitespace.
        last_blocks[-1] = {**last_blocks[-1], "text": last_blocks[-1]["text"].rstrip()}

    cap = optional_int(body, "max_completion_tokens", minimum=1)
    legacy_cap = optional_int(body, "max_tokens", minimum=1)
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": cap if cap is not None else (
            legacy_cap if legacy_cap is not None else default_max_tokens),
    }
    instruction, output_format = _response_format(body, structured_outputs)
    if instruction:
        system.append(instruction)
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = [_message_out(role, blocks) for role, blocks in turns]

    tools = _tools(body.get("tools"))
    choice = _tool_choice(body)
    if tools:
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice
    temperature = _number(body, "temperature", 2)
    top_p = _number(body, "top_p", 1)
    top_k = optional_int(body, "top_k", minimum=0)
    if sampling:
        if temperature is not None:
            out["temperature"] = min(temperature, 1.0)
        if top_p is not None:
            out["top_p"] = top_p
        if top_k is not None:
            out["top_k"] = top_k
    stop = _stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    user = optional_str(body, "user") or optional_str(body, "safety_identifier")
    if user:
        out["metadata"] = {"user_id": user}
    if optional_bool(body, "stream"):
        out["stream"] = True
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise bad_request("'thinking' must be an object", param="thinking")
        out["thinking"] = thinking
    return out


# --- responses ----------------------------------------------------------------------------


def message_to_chat(resp: Any, model: str, *, created: int | None = None) -> dict[str, Any]:
    """An Anthropic Messages response as an OpenAI ``chat.completion`` object."""
    if not isinstance(resp, dict):
        resp = {}
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    content = resp.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = block.get("input")
            tool_calls.append(chat_tool_call(
                block.get("id"), block.get("name"),
                arguments if isinstance(arguments, str)
                else dumps_text({} if arguments is None else arguments),
                len(tool_calls)))
    tracker = UsageTracker()
    tracker.update(resp.get("usage"))
    choice = {
        "index": 0,
        "message": chat_message(texts, tool_calls),
        "finish_reason": finish_reason(resp.get("stop_reason")),
        "logprobs": None,
    }
    return chat_completion(chat_id(resp.get("id")), model, [choice],
                           tracker.usage() if tracker.seen else None, created)


# --- streams ------------------------------------------------------------------------------


class StreamTranslator(ObserverWrapper):
    """Anthropic Messages stream events in, chat.completion.chunk SSE events out.

    Also a ``StreamObserver`` around the Anthropic one, which reads each event's usage and
    text: ``on_event`` returns the translated bytes (None when an event has nothing to say
    to an OpenAI client, like ``ping``), ``usage`` is always tracked (whether or not the
    client asked for the usage chunk) and ``output_text`` serves the gateway's own count
    when the stream breaks off before any usage.
    """

    __slots__ = ("_chunks", "_done", "_finished", "_tool_index", "_watcher")

    def __init__(self, model: str, *, include_usage: bool = False,
                 created: int | None = None) -> None:
        self._watcher = AnthropicStreamObserver(model)
        super().__init__(self._watcher)
        self._chunks = ChatChunks(model, include_usage=include_usage, created=created)
        self._tool_index: dict[Any, int] = {}
        self._finished = False
        self._done = False

    @classmethod
    def for_request(cls, body: dict[str, Any], model: str) -> StreamTranslator:
        """A translator honouring the client's ``stream_options.include_usage``."""
        return cls(model, include_usage=wants_usage_chunk(body))

    def on_event(self, event: bytes) -> bytes | None:
        return self.feed(event) or None

    def feed(self, event: bytes) -> bytes:
        """Translate one complete Anthropic SSE event (b"" when there is nothing to send)."""
        if self._done:
            return b""
        kind, payload = load_event(event)
        if payload is None:
            return self._finish() if kind == "message_stop" else b""
        self._watcher.watch(kind, payload)
        if kind == "content_block_delta":
            return self._delta(payload)
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict) and isinstance(message.get("id"), str) \
                    and message["id"]:
                self._chunks.id = chat_id(message["id"])
            return b"" if self._chunks.role_sent else self._chunks.delta({})
        if kind == "message_delta":
            delta = payload.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            if stop is None or self._finished:
                return b""
            self._finished = True
            return self._chunks.delta({}, finish_reason(stop))
        if kind == "message_stop":
            return self._finish()
        if kind == "error":
            self._done = True
            return data_event(anthropic_error(payload.get("error"), 500))
        return b""

    def _block_start(self, payload: dict[str, Any]) -> bytes:
        block = payload.get("content_block")
        if not isinstance(block, dict):
            return b""
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                return self._chunks.delta({"content": text})
        elif kind == "tool_use":
            index = len(self._tool_index)
            self._tool_index[payload.get("index")] = index
            return self._chunks.delta({"tool_calls": [
                {"index": index, **chat_tool_call(block.get("id"), block.get("name"), "", index)}
            ]})
        return b""

    def _delta(self, payload: dict[str, Any]) -> bytes:
        delta = payload.get("delta")
        text = delta_text(delta)
        if not text:
            return b""
        kind = delta.get("type") if isinstance(delta, dict) else None
        if kind == "text_delta":
            return self._chunks.delta({"content": text})
        if kind == "input_json_delta":
            index = self._tool_index.get(payload.get("index"))
            if index is not None:
                return self._chunks.delta({"tool_calls": [
                    {"index": index, "function": {"arguments": text}}]})
        return b""

    def _finish(self) -> bytes:
        self._done = True
        out = b"" if self._finished else self._chunks.delta({}, "stop")
        self._finished = True
        if self._chunks.include_usage:
            out += self._chunks.usage(self.usage or Usage())
        return out + DONE


# --- the gateway's bridge -----------------------------------------------------------------


class ChatOverMessages(TranslatedBody):
    """An OpenAI chat completions request served by an Anthropic upstream (a ``Bridge``),
    its Messages translation following the request's body (``TranslatedBody``): patched
    when only the model or cap changed, else redone, so what is forwarded reflects the
    final body."""

    upstream_api: ApiKind = "messages"

    __slots__ = ()

    def __init__(self, body: dict[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS
                 ) -> None:
        super().__init__(body, default_max_tokens)

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return chat_to_messages(body, self._default_cap)

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**self._translated, "model": require_str(body, "model"),
                "max_tokens": chat_cap(body, self._default_cap)}

    def count_input(self) -> int:
        """Claude's input estimate (o200k × factor), reconciled to usage after the call."""
        body = self._translated
        return tokens.count_anthropic(body["model"], body["messages"], body.get("system"),
                                      body.get("tools"), output_format=output_format(body))

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        return self.follow(req.body)

    def usage_from_body(self, payload: Any) -> Usage | None:
        return usage_from_anthropic(payload.get("usage")) if isinstance(payload, dict) else None

    def response_body(self, payload: bytes, parsed: Any) -> tuple[bytes, Any]:
        if not isinstance(parsed, dict) or parsed.get("type") != "message":
            return payload, parsed
        model = parsed.get("model")
        chat = message_to_chat(parsed, model if isinstance(model, str) and model
                               else self.model)
        return orjson.dumps(chat), chat

    def error_body(self, status: int, payload: bytes) -> bytes:
        return anthropic_error_to_openai(status, payload)

    def observer(self, req: CanonicalRequest) -> StreamTranslator:
        return StreamTranslator.for_request(req.body, self.model)
