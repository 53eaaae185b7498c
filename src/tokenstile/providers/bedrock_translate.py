"""Serving other APIs from Bedrock: OpenAI chat completions over Converse, Anthropic Messages
over InvokeModel.

Chat completions: an ``openai`` SDK client names a model routed to a Bedrock upstream and
the gateway calls Converse. The request goes through the chat → Messages translation
(``providers.translate``: the same validation, system and turn merging, tool mapping), and
the Messages request becomes a Converse one: ``max_tokens`` → ``inferenceConfig.maxTokens``,
``temperature``/``top_p``/``stop`` → ``inferenceConfig``, tools → ``toolConfig``, images and
PDFs → ``bytes`` blocks, ``thinking`` → ``additionalModelRequestFields``. Structured outputs
become a system instruction. Answers, streams (event stream frames in, SSE chunks out) and
errors (``{"message"}`` in, ``{"error": {...}}`` out) are translated back.

Anthropic Messages: an ``anthropic`` SDK client names a Claude model routed to a Bedrock
upstream and the gateway calls InvokeModel with the same body, ``anthropic_version:
bedrock-2023-05-31`` instead of ``model``; the answer is already in Messages' shape, the
stream's ``chunk`` frames are written out as SSE events.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenstile import tokens
from tokenstile.errors import GatewayError, bad_request, render_error
from tokenstile.providers import eventstream
from tokenstile.providers.answers import dumps_text
from tokenstile.providers.anthropic import (
    AnthropicStreamObserver,
    output_format,
    usage_from_anthropic,
)
from tokenstile.providers.base import Bridge, ObserverWrapper, forwarded_body, require_str
from tokenstile.providers.bedrock import BEDROCK_ANTHROPIC_VERSION, invoke_event
from tokenstile.providers.converse import ConverseStreamState, count_converse, usage_of_answer
from tokenstile.providers.counts import wants_usage_chunk
from tokenstile.providers.mapping import (
    CONVERSE_FINISH_REASONS,
    DONE,
    STATUS_ERROR_TYPES,
    ChatChunks,
    TranslatedBody,
    chat_cap,
    chat_completion,
    chat_id,
    chat_message,
    chat_tool_call,
    finish_reason,
    json_or_none,
    openai_error,
    status_error,
    upstream_answered,
)
from tokenstile.providers.sse import data_event, named_event
from tokenstile.providers.translate import chat_to_messages
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat

_OPENAI_ERROR_TYPES: dict[int, str] = {**STATUS_ERROR_TYPES, 408: "server_error",
                                       424: "server_error"}

# --- requests -----------------------------------------------------------------------------


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise bad_request(f"'{where}': Bedrock takes images as bytes; send a base64 data URL "
                          "(data:image/png;base64,...) instead of a link", param=where)
    media_type = str(source.get("media_type", "image/png"))
    return {"image": {"format": media_type.removeprefix("image/"),
                      "source": {"bytes": source.get("data")}}}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Anthropic content (a string or blocks, as ``chat_to_messages`` writes them) as
    Converse blocks."""
    if isinstance(content, str):
        return [{"text": content}]
    out: list[dict[str, Any]] = []
    for j, block in enumerate(content if isinstance(content, list) else ()):
        kind = block.get("type")
        at = f"{where}[{j}]"
        if kind == "text":
            out.append({"text": block["text"]})
        elif kind == "image":
            out.append(_image(block, at))
        elif kind == "document":
            out.append({"document": {"format": "pdf", "name": f"document-{len(out) + 1}",
                                     "source": {"bytes": block["source"]["data"]}}})
        elif kind == "tool_use":
            out.append({"toolUse": {"toolUseId": block["id"], "name": block["name"],
                                    "input": block.get("input") or {}}})
        elif kind == "tool_result":
            text = block.get("content")
            out.append({"toolResult": {"toolUseId": block["tool_use_id"],
                                       "content": [{"text": text}] if text else [{"json": {}}]}})
    return out


def _tools(tools: Any, choice: Any) -> dict[str, Any] | None:
    if not tools:
        return None
    config: dict[str, Any] = {"tools": []}
    for tool in tools:
        spec: dict[str, Any] = {"name": tool["name"], "inputSchema": {"json": tool["input_schema"]}}
        if tool.get("description"):
            spec["description"] = tool["description"]
        config["tools"].append({"toolSpec": spec})
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        config["toolChoice"] = {"auto": {}}
    elif kind == "any":
        config["toolChoice"] = {"any": {}}
    elif kind == "tool":
        config["toolChoice"] = {"tool": {"name": choice["name"]}}
    return config  # "none" has no Converse counterpart: the tools stay, unforced


def messages_to_converse(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request (as ``chat_to_messages`` writes it) as a Converse
    request; ``model`` stays in it for the gateway (the URL carries it upstream)."""
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": [{"role": m["role"], "content": _blocks(m["content"], f"messages[{i}]")}
                     for i, m in enumerate(body["messages"])],
    }
    if body.get("system"):
        out["system"] = [{"text": body["system"]}]
    config: dict[str, Any] = {"maxTokens": body["max_tokens"]}
    if body.get("stop_sequences"):
        config["stopSequences"] = body["stop_sequences"]
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    out["inferenceConfig"] = config
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    if tools is not None:
        out["toolConfig"] = tools
    if body.get("thinking") is not None:
        out["additionalModelRequestFields"] = {"thinking": body["thinking"]}
    return out


def chat_to_converse(body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat completions request as a Converse request (see the module's notes)."""
    return messages_to_converse(chat_to_messages(body, default_max_tokens,
                                                 structured_outputs=False, sampling=True))


# --- answers ------------------------------------------------------------------------------


def _finish_reason(stop_reason: Any) -> str:
    return finish_reason(stop_reason, CONVERSE_FINISH_REASONS)


def _tool_call(use: dict[str, Any], arguments: str, position: int) -> dict[str, Any]:
    """A Converse ``toolUse`` as a chat tool call (an empty id or name counts as none)."""
    return chat_tool_call(str(use.get("toolUseId") or f"call_{position}"),
                          str(use.get("name") or ""), arguments, position)


def converse_to_chat(resp: Any, model: str, *, created: int | None = None) -> dict[str, Any]:
    """A Converse answer as an OpenAI ``chat.completion`` object."""
    output = resp.get("output") if isinstance(resp, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        use = block.get("toolUse")
        if isinstance(use, dict):
            calls.append(_tool_call(use, dumps_text(use.get("input") or {}), len(calls)))
    choice = {"index": 0, "message": chat_message(texts, calls), "logprobs": None,
              "finish_reason": _finish_reason(resp.get("stopReason")
                                              if isinstance(resp, dict) else None)}
    return chat_completion(chat_id(None), model, [choice], usage_of_answer(resp), created)


def _message_of(status: int, body: bytes) -> str:
    parsed = json_or_none(body)
    message = parsed.get("message") or parsed.get("Message") if isinstance(parsed, dict) \
        else None
    if isinstance(message, str) and message:
        return message
    return upstream_answered(status, body)


def bedrock_error_to_openai(status: int, body: bytes) -> bytes:
    """A Bedrock error body (``{"message"}``) in OpenAI's shape."""
    return status_error(status, _message_of(status, body), _OPENAI_ERROR_TYPES)


def bedrock_error_to_anthropic(status: int, body: bytes) -> bytes:
    """A Bedrock error body in Anthropic's shape."""
    return render_error("anthropic", status, _message_of(status, body))


# --- streams ------------------------------------------------------------------------------


class ConverseChatTranslator:
    """ConverseStream frames in, ``chat.completion.chunk`` SSE events out (a
    ``StreamObserver``): every frame is decoded, usage comes from the ``metadata`` event."""

    __slots__ = ("_chunks", "_done", "_state", "_tools", "_usage_override")

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self._chunks = ChatChunks(model, include_usage=include_usage)
        self._state = ConverseStreamState()
        self._tools: dict[Any, int] = {}
        self._done = False
        self._usage_override: Usage | None = None

    @classmethod
    def for_request(cls, body: dict[str, Any], model: str) -> ConverseChatTranslator:
        return cls(model, include_usage=wants_usage_chunk(body))

    @property
    def usage(self) -> Usage | None:
        return self._usage_override or self._state.final_usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._usage_override = value

    def output_text(self) -> str:
        return "".join(self._state.text.visible)

    def reasoning_text(self) -> str:
        return "".join(self._state.text.reasoning)

    def answering(self) -> bool:
        return bool(self._state.text.visible)

    def usage_is_final(self) -> bool:
        return self._usage_override is not None or self._state.final_usage is not None

    def on_event(self, event: bytes) -> bytes | None:
        if self._done:
            return None
        frame = eventstream.decode(event)
        if frame.message_type != "event":
            self._done = True
            message = _message_of(500, frame.payload)
            return data_event(openai_error(message, "server_error", frame.name or None))
        payload = frame.json()
        self._state.apply(frame.name, payload)
        if not isinstance(payload, dict):
            return None
        return self._translate(frame.name, payload) or None

    def _translate(self, name: str, payload: dict[str, Any]) -> bytes:
        chunks = self._chunks
        if name == "messageStart":
            return b"" if chunks.role_sent else chunks.delta({})
        if name == "contentBlockStart":
            start = payload.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if not isinstance(use, dict):
                return b""
            index = self._tools[payload.get("contentBlockIndex")] = len(self._tools)
            return chunks.delta({"tool_calls": [{"index": index,
                                                 **_tool_call(use, "", index)}]})
        if name == "contentBlockDelta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return b""
            if isinstance(delta.get("text"), str) and delta["text"]:
                return chunks.delta({"content": delta["text"]})
            use = delta.get("toolUse")
            call = self._tools.get(payload.get("contentBlockIndex"))
            if isinstance(use, dict) and isinstance(use.get("input"), str) and call is not None:
                return chunks.delta({"tool_calls": [
                    {"index": call, "function": {"arguments": use["input"]}}]})
            return b""
        if name == "messageStop":
            return chunks.delta({}, _finish_reason(payload.get("stopReason")))
        if name == "metadata":
            self._done = True
            out = b""
            if chunks.include_usage:
                out = chunks.usage(self._state.final_usage or Usage())
            return out + DONE
        return b""


class InvokeMessagesTranslator(ObserverWrapper):
    """InvokeModelWithResponseStream frames in, Anthropic SSE events out (a
    ``StreamObserver`` around the Anthropic one, which counts them)."""

    __slots__ = ()

    def __init__(self, model: str) -> None:
        super().__init__(AnthropicStreamObserver(model))

    def on_event(self, event: bytes) -> bytes | None:
        frame = eventstream.decode(event)
        if frame.message_type != "event":
            error = {"type": "error", "error": {"type": "api_error",
                                                "message": _message_of(500, frame.payload)}}
            return named_event("error", error)
        inner = invoke_event(frame)
        if inner is None:
            return None
        kind = str(inner.get("type") or "message")
        return self._inner.on_event(named_event(kind, inner))


# --- the gateway's bridges ----------------------------------------------------------------


class ChatOverConverse(TranslatedBody):
    """An OpenAI chat completions request served by a Bedrock upstream's Converse API, its
    translation following the request's body (``TranslatedBody``)."""

    upstream_api: ApiKind = "converse"

    __slots__ = ()

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return chat_to_converse(body, self._default_cap)

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        config = {**self._translated["inferenceConfig"],
                  "maxTokens": chat_cap(body, self._default_cap)}
        return {**self._translated, "model": require_str(body, "model"),
                "inferenceConfig": config}

    def count_input(self) -> int:
        return count_converse(self.model, self._translated)

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        return forwarded_body(self.follow(req.body))

    def usage_from_body(self, payload: Any) -> Usage | None:
        return usage_of_answer(payload)

    def response_body(self, payload: bytes, parsed: Any) -> tuple[bytes, Any]:
        if not isinstance(parsed, dict) or "output" not in parsed:
            return payload, parsed
        chat = converse_to_chat(parsed, self.model)
        return orjson.dumps(chat), chat

    def error_body(self, status: int, payload: bytes) -> bytes:
        return bedrock_error_to_openai(status, payload)

    def observer(self, req: CanonicalRequest) -> ConverseChatTranslator:
        return ConverseChatTranslator.for_request(req.body, self.model)


class MessagesOverInvoke:
    """An Anthropic Messages request served by a Bedrock upstream's InvokeModel."""

    upstream_api: ApiKind = "messages"

    __slots__ = ("_body",)

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def count_input(self) -> int:
        body = self._body
        return tokens.count_anthropic(require_str(body, "model"), body.get("messages"),
                                      body.get("system"), body.get("tools"),
                                      output_format=output_format(body))

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        return {**forwarded_body(req.body), "anthropic_version": BEDROCK_ANTHROPIC_VERSION}

    def usage_from_body(self, payload: Any) -> Usage | None:
        return usage_from_anthropic(payload.get("usage")) if isinstance(payload, dict) \
            else None

    def response_body(self, payload: bytes, parsed: Any) -> tuple[bytes, Any]:
        return payload, parsed

    def error_body(self, status: int, payload: bytes) -> bytes:
        return bedrock_error_to_anthropic(status, payload)

    def observer(self, req: CanonicalRequest) -> InvokeMessagesTranslator:
        return InvokeMessagesTranslator(req.model)


def bedrock_bridge(api: ApiKind, client_wire: WireFormat, upstream_wire: WireFormat,
                   upstream: str, body: dict[str, Any], default_max_tokens: int) -> Bridge:
    """The bridge between a Bedrock upstream and another wire, or a 400 saying why none."""
    model = body.get("model")
    if upstream_wire == "bedrock":
        if client_wire == "openai" and api == "chat":
            return ChatOverConverse(body, default_max_tokens)
        if client_wire == "anthropic" and api == "messages":
            return MessagesOverInvoke(body)
        raise GatewayError(
            400, f"the model {model!r} is served by the Bedrock upstream {upstream!r}, which "
                 "serves chat completions (/v1/chat/completions), Anthropic Messages "
                 "(/v1/messages, for Claude) and Bedrock's own routes (/model/{modelId}/"
                 "converse…), not this API", code="unsupported_api")
    raise GatewayError(
        400, f"Bedrock routes (/model/{{modelId}}/…) need an upstream of kind bedrock, but the "
             f"model {model!r} is served by the {upstream_wire} upstream {upstream!r}; route "
             "it to a bedrock upstream, or call it through that provider's own API",
        code="unsupported_api")

