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
import time
import uuid
from typing import Any

import orjson

from tokenstile import tokens
from tokenstile.errors import GatewayError, bad_request, render_error
from tokenstile.providers.answers import AnswerText, WatchesText
from tokenstile.providers.anthropic import (
    UsageTracker,
    block_start_parts,
    delta_parts,
    delta_text,
    dumps_text,
    load_event,
    output_format,
    stream_usage,
    usage_from_anthropic,
)
from tokenstile.providers.base import (
    Bridge,
    optional_bool,
    optional_int,
    optional_str,
    require_str,
)
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat

DEFAULT_MAX_TOKENS = 4096

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no Markdown code fences, "
    "no text before or after it."
)
JSON_SCHEMA_INSTRUCTION = (
    "Respond with a single valid JSON value that conforms to the JSON schema below and "
    "nothing else: no Markdown code fences, no text before or after it.\nSchema:\n"
)

# Anthropic error types → OpenAI error types (the Anthropic type is kept as ``code``).
_OPENAI_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "billing_error": "insufficient_quota",
    "rate_limit_error": "rate_limit_exceeded",
    "timeout_error": "server_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}

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
                       "input": _tool_input(function.get("arguments"))})
    return blocks


def _tool_input(arguments: Any) -> dict[str, Any]:
    """Tool arguments as the object Anthropic requires; unparseable text is kept verbatim."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    raw = arguments if isinstance(arguments, str) else dumps_text(arguments)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_raw": raw}
    return parsed if isinstance(parsed, dict) else {"_raw": raw}


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


def _turns(messages: Any) -> tuple[list[str], list[tuple[str, list[dict[str, Any]]]]]:
    """System texts and alternating (role, blocks) turns."""
    if messages is None:
        raise bad_request("'messages' is required", param="messages",
                          code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"'{where}' must be an object", param=where)
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
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad_request(f"'{at}' must be an object", param=at)
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
    system, turns = _turns(body.get("messages"))
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


def chat_id(message_id: Any) -> str:
    """A chat completion id that still shows which Anthropic message it came from."""
    if isinstance(message_id, str) and message_id:
        return "chatcmpl-" + message_id.removeprefix("msg_")
    return "chatcmpl-" + uuid.uuid4().hex


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def chat_usage(usage: Usage) -> dict[str, Any]:
    """tokenstile usage as a chat completions ``usage`` block."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


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
            call_id, name = block.get("id"), block.get("name")
            arguments = block.get("input")
            tool_calls.append({
                "id": call_id if isinstance(call_id, str) else f"call_{len(tool_calls)}",
                "type": "function",
                "function": {
                    "name": name if isinstance(name, str) else "",
                    "arguments": arguments if isinstance(arguments, str)
                    else dumps_text({} if arguments is None else arguments),
                },
            })
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    tracker = UsageTracker()
    tracker.update(resp.get("usage"))
    return {
        "id": chat_id(resp.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(resp.get("stop_reason")),
            "logprobs": None,
        }],
        "usage": chat_usage(tracker.usage()) if tracker.seen else None,
        "system_fingerprint": None,
    }


# --- streams ------------------------------------------------------------------------------


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class StreamTranslator(WatchesText):
    """Anthropic Messages stream events in, chat.completion.chunk SSE events out.

    Also a ``StreamObserver``: ``on_event`` returns the translated bytes (None when an
    event has nothing to say to an OpenAI client, like ``ping``), ``usage`` is always
    tracked (whether or not the client asked for the usage chunk) and ``output_text``
    serves the gateway's own count when the stream breaks off before any usage.
    """

    __slots__ = ("_created", "_done", "_finished", "_id", "_include_usage", "_model",
                 "_role_sent", "_text", "_tool_index", "_tracker", "_usage_override")

    def __init__(self, model: str, *, include_usage: bool = False,
                 created: int | None = None) -> None:
        self._model = model
        self._include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._id = chat_id(None)
        self._text = AnswerText()
        self._tracker = UsageTracker()
        self._tool_index: dict[Any, int] = {}
        self._role_sent = False
        self._finished = False
        self._done = False
        self._usage_override: Usage | None = None

    @classmethod
    def for_request(cls, body: dict[str, Any], model: str) -> StreamTranslator:
        """A translator honouring the client's ``stream_options.include_usage``."""
        options = body.get("stream_options")
        return cls(model, include_usage=isinstance(options, dict)
                   and options.get("include_usage") is True)

    @property
    def usage(self) -> Usage | None:
        """Counts the text generated so far when the stream broke off mid-message: read it
        once, when the stream is over."""
        if self._usage_override is not None:
            return self._usage_override
        return stream_usage(self._tracker, self._model, self.output_text(),
                            self.reasoning_text())

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._usage_override = value

    def usage_is_final(self) -> bool:
        return self._usage_override is not None or self._tracker.final

    def on_event(self, event: bytes) -> bytes | None:
        return self.feed(event) or None

    def feed(self, event: bytes) -> bytes:
        """Translate one complete Anthropic SSE event (b"" when there is nothing to send)."""
        if self._done:
            return b""
        kind, payload = load_event(event)
        if payload is None:
            return self._finish() if kind == "message_stop" else b""
        if kind == "content_block_delta":
            return self._delta(payload)
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._tracker.update(message.get("usage"))
                if isinstance(message.get("id"), str) and message["id"]:
                    self._id = chat_id(message["id"])
            return b"" if self._role_sent else self._chunk({})
        if kind == "message_delta":
            self._tracker.update(payload.get("usage"), final=True)
            delta = payload.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            if stop is None or self._finished:
                return b""
            self._finished = True
            return self._chunk({}, finish_reason(stop))
        if kind == "message_stop":
            return self._finish()
        if kind == "error":
            self._done = True
            return _sse(_openai_error_payload(payload.get("error"), 500))
        return b""

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", "content": "", **delta}
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}],
        }
        if self._include_usage:
            chunk["usage"] = None
        return _sse(chunk)

    def _block_start(self, payload: dict[str, Any]) -> bytes:
        block = payload.get("content_block")
        if not isinstance(block, dict):
            return b""
        block_start_parts(block, self._text)
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                return self._chunk({"content": text})
        elif kind == "tool_use":
            index = len(self._tool_index)
            self._tool_index[payload.get("index")] = index
            call_id, name = block.get("id"), block.get("name")
            return self._chunk({"tool_calls": [{
                "index": index,
                "id": call_id if isinstance(call_id, str) else f"call_{index}",
                "type": "function",
                "function": {"name": name if isinstance(name, str) else "", "arguments": ""},
            }]})
        return b""

    def _delta(self, payload: dict[str, Any]) -> bytes:
        delta = payload.get("delta")
        text = delta_text(delta)
        if not text:
            return b""
        delta_parts(delta, self._text)
        kind = delta.get("type") if isinstance(delta, dict) else None
        if kind == "text_delta":
            return self._chunk({"content": text})
        if kind == "input_json_delta":
            index = self._tool_index.get(payload.get("index"))
            if index is not None:
                return self._chunk({"tool_calls": [
                    {"index": index, "function": {"arguments": text}}]})
        return b""

    def _finish(self) -> bytes:
        self._done = True
        out = b"" if self._finished else self._chunk({}, "stop")
        self._finished = True
        if self._include_usage:
            usage = self.usage or Usage()
            out += _sse({
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": chat_usage(usage),
            })
        return out + DONE


# --- errors -------------------------------------------------------------------------------


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _fallback_message(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()[:500]
    return f"the upstream answered {status}" + (f": {text}" if text else "")


def _openai_error_payload(error: Any, status: int) -> dict[str, Any]:
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "the upstream reported an error"
    code = kind if isinstance(kind, str) else None
    openai_type = _OPENAI_ERROR_TYPES.get(code or "") or (
        "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


def anthropic_error_to_openai(status: int, body: bytes) -> bytes:
    """An Anthropic error body (``{"type": "error", "error": {...}}``) in OpenAI's shape."""
    parsed = _load(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        error = {"message": _fallback_message(status, body)}
    return orjson.dumps(_openai_error_payload(error, status))


def openai_error_to_anthropic(status: int, body: bytes) -> bytes:
    """An OpenAI error body (``{"error": {...}}``) in Anthropic's shape."""
    parsed = _load(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = _fallback_message(status, body)
    return render_error("anthropic", status, message)


# --- the gateway's bridge -----------------------------------------------------------------

_API_NAMES: dict[str, str] = {
    "chat": "chat completions", "completions": "completions", "embeddings": "embeddings",
    "responses": "Responses", "messages": "Messages", "count_tokens": "token counting",
}


class ChatOverMessages:
    """An OpenAI chat completions request served by an Anthropic upstream (a ``Bridge``).

    The request is translated when the bridge is built, so an untranslatable one is refused
    before anything is reserved. If a later stage replaces ``req.body`` (admission setting
    the output cap, a fallback naming another model), the translation follows: patched when
    only the model or cap changed, else redone, so what is forwarded reflects the final body.
    """

    upstream_api: ApiKind = "messages"

    __slots__ = ("_default_cap", "_source", "_translated")

    def __init__(self, body: dict[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS
                 ) -> None:
        self._default_cap = default_max_tokens
        self._source = body
        self._translated = chat_to_messages(body, default_max_tokens)

    @property
    def model(self) -> str:
        model: str = self._translated["model"]
        return model

    def count_input(self) -> int:
        """Claude's input estimate (o200k × factor), reconciled to usage after the call."""
        body = self._translated
        return tokens.count_anthropic(body["model"], body["messages"], body.get("system"),
                                      body.get("tools"), output_format=output_format(body))

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        body = req.body
        if body is self._source:
            return self._translated
        if _same_except(body, self._source, ("model", "max_tokens", "max_completion_tokens")):
            # A copy with another model or cap (admission, a fallback): patch, don't redo.
            cap = optional_int(body, "max_completion_tokens", minimum=1)
            if cap is None:
                cap = optional_int(body, "max_tokens", minimum=1)
            self._translated = {**self._translated, "model": require_str(body, "model"),
                                "max_tokens": self._default_cap if cap is None else cap}
        else:
            self._translated = chat_to_messages(body, self._default_cap)
        self._source = body
        return self._translated

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


def _same_except(a: dict[str, Any], b: dict[str, Any], fields: tuple[str, ...]) -> bool:
    """Shallow: the same keys (give or take ``fields``) holding the same objects."""
    keys = a.keys() | b.keys()
    return all(a.get(k) is b.get(k) for k in keys if k not in fields)


def bridge_for(api: ApiKind, client_wire: WireFormat, upstream_wire: WireFormat,
               upstream: str, body: dict[str, Any], default_max_tokens: int) -> Bridge:
    """The bridge serving ``api`` (sent in ``client_wire``) from an upstream speaking
    ``upstream_wire``, or a 400 saying why there is none."""
    if "bedrock" in (client_wire, upstream_wire):
        # Imported here: the Bedrock bridges build on this module.
        from tokenstile.providers.bedrock_translate import bedrock_bridge

        return bedrock_bridge(api, client_wire, upstream_wire, upstream, body,
                              default_max_tokens)
    if "gemini" in (client_wire, upstream_wire):
        from tokenstile.providers.gemini_translate import gemini_bridge

        return gemini_bridge(api, client_wire, upstream_wire, upstream, body,
                             default_max_tokens)
    model = body.get("model")
    if client_wire == "anthropic" and upstream_wire == "openai" and api == "messages":
        from tokenstile.providers.messages_over_chat import MessagesOverChat

        return MessagesOverChat(body, default_max_tokens)
    if client_wire == "openai" and upstream_wire == "anthropic":
        if api == "chat":
            return ChatOverMessages(body, default_max_tokens)
        raise GatewayError(
            400, f"the {_API_NAMES.get(api, api)} API is not supported by the anthropic "
                 f"upstream {upstream!r} that serves the model {model!r}; call Claude models "
                 "through /v1/chat/completions or /v1/messages",
            code="unsupported_api")
    raise GatewayError(
        400, f"the token counting API (/v1/messages/count_tokens) needs an anthropic "
             f"upstream, but the model {model!r} is served by the OpenAI-compatible upstream "
             f"{upstream!r}; read the input tokens from /v1/messages's usage instead, or "
             "route the model to an upstream of kind anthropic",
        code="unsupported_api")
