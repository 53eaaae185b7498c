"""Anthropic's wire format: the Messages API and its free token-counting endpoint.

Claude's tokenizer is not public, so the input count made before a call is an estimate
(o200k text × ``tokens.CLAUDE_FACTOR``, see ``tokens.count_anthropic``). It only sizes the
reservation; the provider's own ``usage`` replaces it once the call has been answered.

Anthropic reports ``input_tokens`` *without* cache reads and cache writes, while tokenstile's
``Usage`` follows OpenAI and counts them inside ``input_tokens``: every usage block read here
is converted, so a cached prompt is neither billed twice nor under-counted against budgets.
"""

from __future__ import annotations

from typing import Any

from tokenstile import tokens
from tokenstile.errors import bad_request
from tokenstile.hidden_input import hidden_sources
from tokenstile.providers.answers import AnswerText, WatchesText, dumps_text
from tokenstile.providers.base import (
    each_message,
    each_tool,
    optional_bool,
    optional_int,
    require_messages,
    require_str,
)
from tokenstile.providers.counts import token_count
from tokenstile.providers.sse import event_fields, json_object, named_event
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat

ROLES = ("user", "assistant")

# Stream events that carry neither usage nor generated text: skipped without parsing.
_QUIET_EVENTS = frozenset({"ping", "content_block_stop", "message_stop"})

_MAX_DEPTH = 16


def content_text(node: Any, out: list[str], depth: int = 0) -> None:
    """Model-visible text of Anthropic content: text, tool inputs and results, thinking,
    plain-text documents. Images and base64 payloads are skipped."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, str):
        if node:
            out.append(node)
        return
    if isinstance(node, list):
        for item in node:
            content_text(item, out, depth + 1)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "text":
        content_text(node.get("text"), out, depth + 1)
    elif kind in ("tool_use", "server_tool_use"):
        value = node.get("input")
        if value is not None:
            out.append(value if isinstance(value, str) else dumps_text(value))
    elif kind == "tool_result" or kind == "search_result":
        content_text(node.get("title"), out, depth + 1)
        content_text(node.get("content"), out, depth + 1)
    elif kind == "thinking":
        content_text(node.get("thinking"), out, depth + 1)
    elif kind == "document":
        content_text(node.get("title"), out, depth + 1)
        content_text(node.get("context"), out, depth + 1)
        source = node.get("source")
        if isinstance(source, dict):
            if source.get("type") == "text":
                content_text(source.get("data"), out, depth + 1)
            elif source.get("type") == "content":
                content_text(source.get("content"), out, depth + 1)


def _parse_system(body: dict[str, Any]) -> str:
    system = body.get("system")
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise bad_request("'system' must be a string or an array of text blocks", param="system")
    texts: list[str] = []
    for i, block in enumerate(system):
        if (not isinstance(block, dict) or block.get("type") != "text"
                or not isinstance(block.get("text"), str)):
            raise bad_request(f"'system[{i}]' must be a text block "
                              '({"type": "text", "text": "..."})', param=f"system[{i}]")
        texts.append(block["text"])
    return "\n".join(texts)


def _parse_messages(body: dict[str, Any]) -> str:
    texts: list[str] = []
    for where, message in each_message(require_messages(body)):
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"'{where}.role' must be 'user' or 'assistant', got {role!r} "
                              "(put system prompts in the top-level 'system' field)",
                              param=f"{where}.role")
        content = message.get("content")
        if content is None:
            raise bad_request(f"'{where}.content' is required", param=f"{where}.content",
                              code="missing_required_parameter")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise bad_request(f"'{where}.content[{j}]' must be a content block "
                                      "object with a 'type'", param=f"{where}.content[{j}]")
        elif not isinstance(content, str):
            raise bad_request(f"'{where}.content' must be a string or an array of content "
                              "blocks", param=f"{where}.content")
        content_text(content, texts)
    return "\n".join(texts)


def _parse_end_user(body: dict[str, Any]) -> str | None:
    metadata = body.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise bad_request("'metadata' must be an object", param="metadata")
    user_id = metadata.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise bad_request("'metadata.user_id' must be a string", param="metadata.user_id")
    return user_id or None


class AnthropicAdapter:
    """``/v1/messages`` and ``/v1/messages/count_tokens``."""

    wire: WireFormat = "anthropic"

    def parse(self, api: ApiKind, body: dict[str, Any]) -> CanonicalRequest:
        model = require_str(body, "model")
        if api == "messages":
            if body.get("max_tokens") is None:
                raise bad_request("'max_tokens' is required: Anthropic's Messages API needs an "
                                  "output cap on every request", param="max_tokens",
                                  code="missing_required_parameter")
            # 0 is valid upstream: it warms the prompt cache without generating anything.
            cap: int | None = optional_int(body, "max_tokens", minimum=0)
            cap_field: str | None = "max_tokens"
            stream = optional_bool(body, "stream")
        else:
            cap, cap_field, stream = 0, None, False
        system_text = _parse_system(body)
        input_text = _parse_messages(body)
        for _ in each_tool(body.get("tools")):
            pass  # objects in an array: their fields are the upstream's to check
        return CanonicalRequest(
            api=api,
            wire="anthropic",
            model=model,
            body=body,
            stream=stream,
            output_cap=cap,
            output_cap_field=cap_field,
            end_user=_parse_end_user(body),
            input_text=input_text,
            system_text=system_text,
            hidden_input=hidden_sources(api, body),
        )

    def count_input(self, req: CanonicalRequest) -> int:
        """An estimate for Claude (o200k × factor), reconciled to provider usage afterwards."""
        body = req.body
        return tokens.count_anthropic(req.model, body.get("messages"), body.get("system"),
                                      body.get("tools"), output_format=output_format(body))

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        """Anthropic streams always carry usage, so the body goes as the client sent it."""
        return req.body

    def usage_from_body(self, api: ApiKind, payload: Any) -> Usage | None:
        """Provider usage of a Messages response; None when it has none (we then count).

        Token counting is free, so a count_tokens answer bills zero tokens (not None, which
        would make the gateway bill its own estimate of the input).
        """
        if api == "count_tokens":
            return Usage()
        if not isinstance(payload, dict):
            return None
        return usage_from_anthropic(payload.get("usage"))

    def observer(self, req: CanonicalRequest) -> AnthropicStreamObserver:
        return AnthropicStreamObserver(req.model)


def output_format(body: dict[str, Any]) -> Any:
    """Structured outputs: ``output_config.format``, or the older ``output_format``."""
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        return config["format"]
    return body.get("output_format")


def usage_from_anthropic(usage: Any) -> Usage | None:
    """One Anthropic ``usage`` block in tokenstile's (OpenAI's) convention."""
    if not isinstance(usage, dict):
        return None
    tracker = UsageTracker()
    tracker.update(usage)
    return tracker.usage()


class UsageTracker:
    """Anthropic usage as it accumulates over a stream.

    ``message_start`` carries input, cache and an initial output count; ``message_delta``
    carries the cumulative output count and, in newer API versions, the input and cache
    fields again (larger when server tools ran). Taking the max of each field is right for
    all of these and never bills less than was reported.

    Cache writes are split by lifetime (``cache_creation.ephemeral_1h_input_tokens`` cost
    more than 5-minute ones); server tools report their calls under ``server_tool_use``;
    ``service_tier`` says which tier served the call (``standard``, ``priority``).
    """

    __slots__ = ("cache_read", "cache_write", "cache_write_1h", "final", "input", "output",
                 "seen", "thinking", "tier", "web_fetches", "web_searches")

    def __init__(self) -> None:
        self.input = 0
        self.cache_read = 0
        self.cache_write = 0
        self.cache_write_1h = 0
        self.output = 0
        self.thinking = 0
        self.web_searches = 0
        self.web_fetches = 0
        self.tier: str | None = None
        self.seen = False
        self.final = False

    def update(self, usage: Any, *, final: bool = False) -> None:
        if not isinstance(usage, dict):
            return
        self.seen = True
        self.final = self.final or final
        self.input = max(self.input, token_count(usage.get("input_tokens")))
        self.cache_read = max(self.cache_read,
                              token_count(usage.get("cache_read_input_tokens")))
        self.cache_write = max(self.cache_write,
                               token_count(usage.get("cache_creation_input_tokens")))
        self.output = max(self.output, token_count(usage.get("output_tokens")))
        details = usage.get("output_tokens_details")
        if isinstance(details, dict):
            self.thinking = max(self.thinking, token_count(details.get("thinking_tokens")))
        creation = usage.get("cache_creation")
        if isinstance(creation, dict):
            short = token_count(creation.get("ephemeral_5m_input_tokens"))
            long = token_count(creation.get("ephemeral_1h_input_tokens"))
            self.cache_write_1h = max(self.cache_write_1h, long)
            # The split may be all there is: the total is at least its parts.
            self.cache_write = max(self.cache_write, short + long)
        tools = usage.get("server_tool_use")
        if isinstance(tools, dict):
            self.web_searches = max(self.web_searches,
                                    token_count(tools.get("web_search_requests")))
            self.web_fetches = max(self.web_fetches,
                                   token_count(tools.get("web_fetch_requests")))
        tier = usage.get("service_tier")
        if isinstance(tier, str) and tier:
            self.tier = tier.strip().lower()[:32]

    def usage(self, output_floor: int = 0, reasoning_floor: int = 0) -> Usage:
        """The usage reported so far, with at least ``output_floor`` output tokens, of
        which at least ``reasoning_floor`` are thinking (the gateway's count of a stream
        cut before its final usage)."""
        output = max(self.output, output_floor)
        return Usage(
            input_tokens=self.input + self.cache_read + self.cache_write,
            output_tokens=output,
            cached_input_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            reasoning_tokens=min(max(self.thinking, reasoning_floor), output),
            cache_write_1h_tokens=min(self.cache_write_1h, self.cache_write),
            web_search_requests=self.web_searches,
            web_fetch_requests=self.web_fetches,
            service_tier=self.tier,
        )


def stream_usage(tracker: UsageTracker, model: str, output_text: str,
                 reasoning_text: str = "") -> Usage | None:
    """Usage of a stream so far; None before any usage arrived (the gateway then counts).

    A stream cut after ``message_start`` has exact input numbers but only the initial
    output count, so the text generated since (thinking included) is counted to stand in
    for the rest.
    """
    if not tracker.seen:
        return None
    if tracker.final or not (output_text or reasoning_text):
        return tracker.usage()
    reasoning = tokens.count_text(model, reasoning_text) if reasoning_text else 0
    visible = tokens.count_text(model, output_text) if output_text else 0
    return tracker.usage(visible + reasoning, reasoning)


def delta_parts(delta: Any, out: AnswerText) -> None:
    """The text of one ``content_block_delta``: visible (text, tool JSON) or thinking."""
    text = delta_text(delta)
    if text:
        if delta.get("type") == "thinking_delta":
            out.reason(text)
        else:
            out.see(text)


def block_start_parts(block: Any, out: AnswerText) -> None:
    """What a ``content_block_start`` already carries: leading text or thinking, a tool's
    name (its input follows as deltas)."""
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    if kind == "text":
        out.see(block.get("text"))
    elif kind == "thinking":
        out.reason(block.get("thinking"))
    elif kind in ("tool_use", "server_tool_use"):
        out.see(block.get("name"))


def delta_text(delta: Any) -> str | None:
    """The generated text in one ``content_block_delta`` (text, tool JSON or thinking)."""
    if not isinstance(delta, dict):
        return None
    kind = delta.get("type")
    if kind == "text_delta":
        value = delta.get("text")
    elif kind == "input_json_delta":
        value = delta.get("partial_json")
    elif kind == "thinking_delta":
        value = delta.get("thinking")
    else:
        return None
    return value if isinstance(value, str) else None


def load_event(event: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The type and JSON payload of one SSE event (payload None when it is not an object)."""
    name, data = event_fields(event)
    payload = None if name in _QUIET_EVENTS else json_object(data)
    if payload is None:
        return name, None
    kind = payload.get("type")
    return (kind if isinstance(kind, str) else name), payload


def watch_event(kind: Any, payload: dict[str, Any], tracker: UsageTracker,
                text: AnswerText) -> None:
    """What one stream event of type ``kind`` says of usage (into ``tracker``) and of the
    generated text (into ``text``)."""
    if kind == "content_block_delta":
        delta_parts(payload.get("delta"), text)
    elif kind == "content_block_start":
        block_start_parts(payload.get("content_block"), text)
    elif kind == "message_start":
        message = payload.get("message")
        if isinstance(message, dict):
            tracker.update(message.get("usage"))
    elif kind == "message_delta":
        tracker.update(payload.get("usage"), final=True)


class AnthropicStreamObserver(WatchesText):
    """Messages streams (``event: X`` / ``data: {...}``): relays every event unchanged."""

    __slots__ = ("_model", "_text", "_tracker", "_usage_override")

    def __init__(self, model: str) -> None:
        self._model = model
        self._text = AnswerText()
        self._tracker = UsageTracker()
        self._usage_override: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        if self._usage_override is not None:
            return self._usage_override
        return stream_usage(self._tracker, self._model, self.output_text(),
                            self.reasoning_text())

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._usage_override = value

    def on_event(self, event: bytes) -> bytes | None:
        kind, payload = load_event(event)
        if payload is not None:
            self.watch(kind, payload)
        return event

    def watch(self, kind: str | None, payload: dict[str, Any]) -> None:
        """Take one event as ``load_event`` read it: its usage and generated text."""
        watch_event(kind, payload, self._tracker, self._text)

    def usage_is_final(self) -> bool:
        return self._usage_override is not None or self._tracker.final


# --- answers made by the gateway ----------------------------------------------------------


def canned_message(model: str, text: str, ident: str) -> dict[str, Any]:
    """A complete Messages answer with ``text`` and zero usage (for answers a policy gives
    without calling the upstream)."""
    return {
        "id": f"msg_{ident}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0},
    }


def canned_stream(model: str, text: str, ident: str) -> tuple[bytes, ...]:
    """The same answer as the event stream the ``anthropic`` SDK reads."""
    start = canned_message(model, "", ident)
    start.update(content=[], stop_reason=None)
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
    ]
    if text:
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": text}}))
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 0}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return tuple(named_event(name, payload) for name, payload in events)
