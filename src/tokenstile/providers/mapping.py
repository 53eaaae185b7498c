"""What the translations between wire formats share: finish and stop reasons, answer ids,
usage blocks, tool calls, chat completion chunks, error bodies, and how a bridge tells that
only the model or the output cap of a body changed.

Used by ``translate`` (chat completions over Messages), ``messages_over_chat`` (Messages
over chat completions), ``bedrock_translate`` (chat completions over Converse) and
``gemini_translate`` (chat completions over generateContent). Pure
functions over JSON-like values, no I/O; reading an upstream's answer never raises.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from typing import Any

import orjson

from tokenstile.errors import render_error
from tokenstile.providers.answers import dumps_text
from tokenstile.providers.base import optional_int
from tokenstile.providers.sse import data_event
from tokenstile.types import Usage

# --- finish and stop reasons --------------------------------------------------------------

# Anthropic ``stop_reason`` → chat ``finish_reason``.
ANTHROPIC_FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Converse ``stopReason`` → chat ``finish_reason``.
CONVERSE_FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# Gemini ``finishReason`` → chat ``finish_reason``.
GEMINI_FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

# Chat ``finish_reason`` → Anthropic ``stop_reason``.
CHAT_STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def finish_reason(stop_reason: Any, reasons: dict[str, str] = ANTHROPIC_FINISH_REASONS) -> str:
    """The chat ``finish_reason`` for another API's stop reason (``stop`` for one that is
    missing or new)."""
    return reasons.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def stop_reason(finish: Any) -> str:
    """The Anthropic ``stop_reason`` for a chat ``finish_reason`` (``end_turn`` for one that
    is missing or new)."""
    return CHAT_STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


# --- ids ----------------------------------------------------------------------------------


def chat_id(message_id: Any = None) -> str:
    """A chat completion id that still shows which Anthropic message it came from (a new
    one when there is none)."""
    if isinstance(message_id, str) and message_id:
        return "chatcmpl-" + message_id.removeprefix("msg_")
    return "chatcmpl-" + uuid.uuid4().hex


def message_id(completion_id: Any = None) -> str:
    """An Anthropic message id that still shows which chat completion it came from (a new
    one when there is none)."""
    if isinstance(completion_id, str) and completion_id:
        return "msg_" + completion_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


# --- usage blocks -------------------------------------------------------------------------


def chat_usage(usage: Usage) -> dict[str, Any]:
    """tokenstile usage as a chat completions ``usage`` block."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def anthropic_usage(usage: Usage | None) -> dict[str, Any]:
    """tokenstile usage (cache reads inside the input) as an Anthropic ``usage`` block."""
    usage = usage or Usage()
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    return {"input_tokens": usage.input_tokens - cached, "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


# --- tool calls ---------------------------------------------------------------------------


def chat_tool_call(call_id: Any, name: Any, arguments: str, position: int) -> dict[str, Any]:
    """One entry of a chat ``tool_calls`` array: a call without a string id is
    ``call_<position>``, one without a string name is named ``""``."""
    return {"id": call_id if isinstance(call_id, str) else f"call_{position}",
            "type": "function",
            "function": {"name": name if isinstance(name, str) else "", "arguments": arguments}}


def tool_input(arguments: Any) -> dict[str, Any]:
    """Chat tool-call arguments (JSON text, or already an object) as the object an Anthropic
    ``tool_use`` block's ``input`` must be: none or blank text is ``{}``, text that is not
    a JSON object is kept verbatim under ``_raw``."""
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


# --- chat completions ----------------------------------------------------------------------


def chat_message(texts: list[str], tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message of a ``chat.completion``: the texts joined (``null`` when there
    are none), the tool calls when there are any."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def chat_completion(completion_id: str, model: str, choices: list[dict[str, Any]],
                    usage: Usage | None, created: int | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object (``created`` now when not given; ``usage`` null when
    the answer reported none)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": choices,
        "usage": chat_usage(usage) if usage is not None else None,
        "system_fingerprint": None,
    }


# --- chat completion chunks ---------------------------------------------------------------

DONE = b"data: [DONE]\n\n"


class ChatChunks:
    """Writes the ``chat.completion.chunk`` events of one translated stream: every chunk
    carries the same id, time and model; the first delta carries the assistant role; with
    ``include_usage`` each chunk has ``"usage": null`` and the usage chunk comes last."""

    __slots__ = ("created", "id", "include_usage", "model", "role_sent")

    def __init__(self, model: str, *, include_usage: bool = False,
                 created: int | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self.id = chat_id(None)
        self.role_sent = False

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self.role_sent:
            self.role_sent = True
            delta = {"role": "assistant", "content": "", **delta}
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return data_event(chunk)

    def usage(self, usage: Usage) -> bytes:
        """The final usage chunk (no choices)."""
        return data_event({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": chat_usage(usage),
        })


# --- errors -------------------------------------------------------------------------------


def upstream_answered(status: int, body: bytes) -> str:
    """The message for an error body that says nothing readable: the status and the start
    of the body."""
    text = body.decode("utf-8", "replace").strip()[:500]
    return f"the upstream answered {status}" + (f": {text}" if text else "")


def openai_error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """An OpenAI error object (``{"error": {...}}``)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# An upstream's HTTP status → the OpenAI error type of its error in OpenAI's shape.
STATUS_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "invalid_request_error", 429: "rate_limit_exceeded",
}


def status_error(status: int, message: str,
                 types: dict[int, str] = STATUS_ERROR_TYPES) -> bytes:
    """An upstream's error with ``status`` as an OpenAI error body; a status ``types`` does
    not name is a server error from 500 on, else an invalid request."""
    kind = types.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps(openai_error(message, kind))


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


def json_or_none(body: bytes) -> Any:
    """A body's JSON, None when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def anthropic_error(error: Any, status: int) -> dict[str, Any]:
    """An Anthropic ``error`` object as an OpenAI error object, its type kept as ``code``."""
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "the upstream reported an error"
    code = kind if isinstance(kind, str) else None
    openai_type = _OPENAI_ERROR_TYPES.get(code or "") or (
        "server_error" if status >= 500 else "invalid_request_error")
    return openai_error(message, openai_type, code)


def anthropic_error_to_openai(status: int, body: bytes) -> bytes:
    """An Anthropic error body (``{"type": "error", "error": {...}}``) in OpenAI's shape."""
    parsed = json_or_none(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        error = {"message": upstream_answered(status, body)}
    return orjson.dumps(anthropic_error(error, status))


def openai_error_to_anthropic(status: int, body: bytes) -> bytes:
    """An OpenAI error body (``{"error": {...}}``) in Anthropic's shape."""
    parsed = json_or_none(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = upstream_answered(status, body)
    return render_error("anthropic", status, message)


# --- bridges ------------------------------------------------------------------------------

_CAP_AND_MODEL = ("model", "max_tokens", "max_completion_tokens")


def only_model_or_cap_changed(body: dict[str, Any], source: dict[str, Any]) -> bool:
    """Whether ``body`` is ``source`` give or take its model and output cap (a copy made by
    admission or a fallback), so a translation can be patched rather than redone. Shallow:
    the same keys holding the same objects."""
    keys = body.keys() | source.keys()
    return all(body.get(k) is source.get(k) for k in keys if k not in _CAP_AND_MODEL)


def chat_cap(body: dict[str, Any], default: int) -> int:
    """A chat request's output cap: ``max_completion_tokens``, else ``max_tokens``, else
    ``default``."""
    cap = optional_int(body, "max_completion_tokens", minimum=1)
    if cap is None:
        cap = optional_int(body, "max_tokens", minimum=1)
    return default if cap is None else cap


class TranslatedBody(ABC):
    """The translation of a client's body that a bridge forwards, kept in step with that
    body. It is made when the bridge is built, so an untranslatable request is refused
    before anything is reserved; when a later stage replaces the body (admission setting
    the output cap, a fallback naming another model) it follows: ``patch``ed when only the
    model or the cap changed and the translation can be patched, else made again.
    """

    __slots__ = ("_default_cap", "_source", "_translated")

    def __init__(self, body: dict[str, Any], default_max_tokens: int) -> None:
        self._default_cap = default_max_tokens
        self._source = body
        self._translated = self.translate(body)

    @abstractmethod
    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        """The whole translation of ``body``."""

    def patch(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The translation with ``body``'s model and output cap, or None to translate
        ``body`` again (the default)."""
        return None

    @property
    def model(self) -> str:
        model: str = self._translated["model"]
        return model

    def follow(self, body: dict[str, Any]) -> dict[str, Any]:
        """The translation of ``body``, the request's body as it is now."""
        if body is not self._source:
            patched = self.patch(body) if only_model_or_cap_changed(body, self._source) \
                else None
            self._translated = self.translate(body) if patched is None else patched
            self._source = body
        return self._translated
