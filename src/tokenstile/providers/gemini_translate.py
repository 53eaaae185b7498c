"""Serving OpenAI chat completions from a Gemini upstream.

An ``openai`` SDK client names a model routed to an upstream of kind ``gemini`` and the
gateway calls ``generateContent`` (or ``streamGenerateContent?alt=sse``). The request goes
through the chat → Messages translation (``providers.translate``: the same validation,
system and turn merging, tool mapping), and the Messages request becomes a Gemini one:
turns → ``contents`` (``assistant`` → ``model``), system → ``systemInstruction``, images and
PDFs → ``inlineData``, tool calls and results → ``functionCall`` / ``functionResponse``,
tools → ``functionDeclarations`` (``parametersJsonSchema``), ``tool_choice`` →
``toolConfig.functionCallingConfig``, ``max_tokens``/``temperature``/``top_p``/``top_k``/
``stop`` → ``generationConfig``. The output cap bounds thinking too
(``providers.generate_content.capped_config``): a model that thinks gets a ``thinkingBudget`` out of
``max_tokens`` when its own largest budget would not fit. Structured outputs become a
system instruction. Answers, streams (Gemini chunks in, ``chat.completion.chunk`` events
out) and errors (Google's ``{"error": {"code", "message", "status"}}`` in, OpenAI's out)
are translated back.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from tokenstile.errors import GatewayError, bad_request
from tokenstile.providers.answers import WatchesText, dumps_text
from tokenstile.providers.base import Bridge, forwarded_body, require_str
from tokenstile.providers.counts import wants_usage_chunk
from tokenstile.providers.generate_content import (
    GeminiStreamState,
    capped_config,
    count_gemini,
    usage_of_answer,
)
from tokenstile.providers.mapping import (
    DONE,
    GEMINI_FINISH_REASONS,
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
from tokenstile.providers.sse import data_event, event_json
from tokenstile.providers.translate import chat_to_messages
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat

_CHOICE_MODES = {"auto": "AUTO", "any": "ANY", "tool": "ANY", "none": "NONE"}

# --- requests -----------------------------------------------------------------------------


def _media(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise bad_request(f"'{where}': Gemini takes images and documents as bytes here; send "
                          "a base64 data URL (data:image/png;base64,...) instead of a link",
                          param=where)
    mime = source.get("media_type") or ("application/pdf" if block.get("type") == "document"
                                        else "image/png")
    return {"inlineData": {"mimeType": mime, "data": source.get("data")}}


def _parts(content: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """Anthropic content (as ``chat_to_messages`` writes it) as Gemini parts; ``names``
    maps tool call ids to tool names (a ``functionResponse`` is named by its tool)."""
    if isinstance(content, str):
        return [{"text": content}]
    out: list[dict[str, Any]] = []
    for j, block in enumerate(content if isinstance(content, list) else ()):
        kind = block.get("type")
        at = f"{where}[{j}]"
        if kind == "text":
            out.append({"text": block["text"]})
        elif kind in ("image", "document"):
            out.append(_media(block, at))
        elif kind == "tool_use":
            names[block["id"]] = block["name"]
            out.append({"functionCall": {"name": block["name"],
                                         "args": block.get("input") or {}}})
        elif kind == "tool_result":
            call_id = block["tool_use_id"]
            out.append({"functionResponse": {"name": names.get(call_id, call_id),
                                             "response": {"content": block.get("content")
                                                          or ""}}})
    return out


def _tools(tools: Any, choice: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    declarations = []
    for tool in tools or ():
        declaration: dict[str, Any] = {"name": tool["name"],
                                       "parametersJsonSchema": tool["input_schema"]}
        if tool.get("description"):
            declaration["description"] = tool["description"]
        declarations.append(declaration)
    kind = choice.get("type") if isinstance(choice, dict) else None
    config: dict[str, Any] | None = None
    if kind in _CHOICE_MODES:
        config = {"mode": _CHOICE_MODES[kind]}
        if kind == "tool":
            config["allowedFunctionNames"] = [choice["name"]]
    tool_config = {"functionCallingConfig": config} if config is not None else None
    return ([{"functionDeclarations": declarations}] if declarations else []), tool_config


def messages_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request (as ``chat_to_messages`` writes it) as a Gemini
    request; ``model`` stays in it for the gateway (the URL carries it upstream)."""
    names: dict[str, str] = {}
    out: dict[str, Any] = {
        "model": body["model"],
        "contents": [{"role": "model" if m["role"] == "assistant" else "user",
                      "parts": _parts(m["content"], f"messages[{i}]", names)}
                     for i, m in enumerate(body["messages"])],
    }
    if body.get("system"):
        out["systemInstruction"] = {"parts": [{"text": body["system"]}]}
    config: dict[str, Any] = {}
    if body.get("stop_sequences"):
        config["stopSequences"] = body["stop_sequences"]
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"),
                         ("top_k", "topK")):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    out["generationConfig"] = config
    tools, tool_config = _tools(body.get("tools"), body.get("tool_choice"))
    if tools:
        out["tools"] = tools
    if tool_config is not None:
        out["toolConfig"] = tool_config
    out["generationConfig"] = capped_config(out["model"], out, body["max_tokens"])
    return out


def chat_to_gemini(body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat completions request as a Gemini request (see the module's notes)."""
    return messages_to_gemini(chat_to_messages(body, default_max_tokens,
                                               structured_outputs=False, sampling=True))


# --- answers ------------------------------------------------------------------------------


def _call_id(call: dict[str, Any]) -> str:
    found = call.get("id")
    return found if isinstance(found, str) and found else "call_" + uuid.uuid4().hex[:24]


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A ``functionCall`` part as a chat tool call."""
    return chat_tool_call(_call_id(call), str(call.get("name") or ""),
                          dumps_text(call.get("args") or {}), 0)


def _finish_reason(reason: Any, calls: bool) -> str:
    if calls and reason in (None, "STOP"):
        return "tool_calls"
    return finish_reason(reason, GEMINI_FINISH_REASONS)


def _candidate_message(candidate: Any) -> tuple[dict[str, Any], bool]:
    content = candidate.get("content") if isinstance(candidate, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, dict):
            calls.append(_tool_call(call))
    return chat_message(texts, calls), bool(calls)


def gemini_to_chat(resp: dict[str, Any], model: str, *,
                   created: int | None = None) -> dict[str, Any]:
    """A Gemini answer as an OpenAI ``chat.completion`` object."""
    choices = []
    for position, candidate in enumerate(resp.get("candidates") or ()):
        message, calls = _candidate_message(candidate)
        reason = candidate.get("finishReason") if isinstance(candidate, dict) else None
        index = candidate.get("index", position) if isinstance(candidate, dict) else position
        choices.append({"index": index, "message": message, "logprobs": None,
                        "finish_reason": _finish_reason(reason, calls)})
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices.append({"index": 0, "message": chat_message([], []), "logprobs": None,
                        "finish_reason": "content_filter"})
    # Google's responseId names the answer in its logs: the chat id carries it
    return chat_completion(chat_id(resp.get("responseId")), model, choices,
                           usage_of_answer(resp), created)


def _message_of(status: int, body: bytes) -> str:
    parsed = json_or_none(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return message
    return upstream_answered(status, body)


def gemini_error_to_openai(status: int, body: bytes) -> bytes:
    """A Google error body in OpenAI's shape."""
    return status_error(status, _message_of(status, body))


# --- streams ------------------------------------------------------------------------------


class GeminiChatTranslator(WatchesText):
    """Gemini SSE chunks in, ``chat.completion.chunk`` SSE events out (a
    ``StreamObserver``): every chunk is read; the usage is the final ``usageMetadata``."""

    __slots__ = ("_chunks", "_done", "_model", "_state", "_text", "_tools",
                 "_usage_override")

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self._model = model
        self._chunks = ChatChunks(model, include_usage=include_usage)
        self._state = GeminiStreamState()
        self._text = self._state.text
        self._tools = 0
        self._done = False
        self._usage_override: Usage | None = None

    @classmethod
    def for_request(cls, body: dict[str, Any], model: str) -> GeminiChatTranslator:
        return cls(model, include_usage=wants_usage_chunk(body))

    @property
    def usage(self) -> Usage | None:
        return self._usage_override or self._state.usage(self._model)

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._usage_override = value

    def usage_is_final(self) -> bool:
        return self._usage_override is not None or self._state.final is not None

    def on_event(self, event: bytes) -> bytes | None:
        if self._done:
            return None
        chunk = event_json(event)
        if not isinstance(chunk, dict):
            return None
        if isinstance(chunk.get("error"), dict):
            self._done = True
            error = chunk["error"]
            status = error.get("code") if isinstance(error.get("code"), int) else 500
            return data_event(openai_error(str(error.get("message") or "upstream error"),
                                           STATUS_ERROR_TYPES.get(status, "server_error"),
                                           error.get("status")))
        self._state.apply(chunk)
        return self._translate(chunk) or None

    def _translate(self, chunk: dict[str, Any]) -> bytes:
        out = bytearray()
        chunks = self._chunks
        candidates = chunk.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if not isinstance(candidate, dict):
            return bytes(out)
        if not chunks.role_sent and isinstance(chunk.get("responseId"), str):
            chunks.id = chat_id(chunk["responseId"])  # as a whole answer's id
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict) or part.get("thought") is True:
                continue
            if isinstance(part.get("text"), str) and part["text"]:
                out += chunks.delta({"content": part["text"]})
            call = part.get("functionCall")
            if isinstance(call, dict):
                index, self._tools = self._tools, self._tools + 1
                out += chunks.delta({"tool_calls": [{"index": index, **_tool_call(call)}]})
        reason = candidate.get("finishReason")
        if reason:
            self._done = True
            out += chunks.delta({}, _finish_reason(reason, self._tools > 0))
            if chunks.include_usage:
                out += chunks.usage(self._state.usage(self._model) or Usage())
            out += DONE
        return bytes(out)


# --- the gateway's bridge -----------------------------------------------------------------


class ChatOverGemini(TranslatedBody):
    """An OpenAI chat completions request served by a Gemini upstream, its generateContent
    translation following the request's body (``TranslatedBody``)."""

    upstream_api: ApiKind = "generate_content"

    __slots__ = ()

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return chat_to_gemini(body, self._default_cap)

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        model = require_str(body, "model")
        translated = {**self._translated, "model": model}
        translated["generationConfig"] = capped_config(
            model, translated, chat_cap(body, self._default_cap))
        return translated

    def count_input(self) -> int:
        return count_gemini(self.model, self._translated)

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        return forwarded_body(self.follow(req.body))

    def usage_from_body(self, payload: Any) -> Usage | None:
        return usage_of_answer(payload)

    def response_body(self, payload: bytes, parsed: Any) -> tuple[bytes, Any]:
        if not isinstance(parsed, dict) or ("candidates" not in parsed
                                            and "usageMetadata" not in parsed):
            return payload, parsed
        chat = gemini_to_chat(parsed, self.model)
        return orjson.dumps(chat), chat

    def error_body(self, status: int, payload: bytes) -> bytes:
        return gemini_error_to_openai(status, payload)

    def observer(self, req: CanonicalRequest) -> GeminiChatTranslator:
        return GeminiChatTranslator.for_request(req.body, self.model)


def gemini_bridge(api: ApiKind, client_wire: WireFormat, upstream_wire: WireFormat,
                  upstream: str, body: dict[str, Any], default_max_tokens: int) -> Bridge:
    """The bridge between a Gemini upstream and another wire, or a 400 saying why none."""
    model = body.get("model")
    if upstream_wire == "gemini":
        if client_wire == "openai" and api == "chat":
            return ChatOverGemini(body, default_max_tokens)
        raise GatewayError(
            400, f"the model {model!r} is served by the Gemini upstream {upstream!r}, which "
                 "serves chat completions (/v1/chat/completions), embeddings "
                 "(/v1/embeddings) and Gemini's own routes "
                 "(/v1beta/models/{model}:generateContent…), not this API",
            code="unsupported_api")
    raise GatewayError(
        400, f"Gemini routes (/v1beta/models/{{model}}:…) need an upstream of kind gemini, "
             f"but the model {model!r} is served by the {upstream_wire} upstream "
             f"{upstream!r}; route it to a gemini upstream, or call it through that "
             "provider's own API", code="unsupported_api")
