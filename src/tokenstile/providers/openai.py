"""OpenAI's wire format: chat completions, completions, embeddings and the Responses API."""

from __future__ import annotations

from typing import Any

from tokenstile import tokens
from tokenstile.errors import bad_request
from tokenstile.hidden_input import hidden_sources
from tokenstile.providers import media
from tokenstile.providers.answers import AnswerText, WatchesText, chat_message_text
from tokenstile.providers.base import (
    collect_text,
    each_message,
    optional_bool,
    optional_int,
    optional_str,
    require_messages,
    require_str,
    string_tags,
    text_field,
)
from tokenstile.providers.counts import service_tier, token_count, wants_usage_chunk
from tokenstile.providers.sse import event_fields, json_object
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat

# Output caps the upstream applies when a request names none.
LEGACY_COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_CAP_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "embeddings": (),
}


def _parse_messages(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str]:
    messages = require_messages(body)
    texts: list[str] = []
    system: list[str] = []
    for where, message in each_message(messages):
        role = message.get("role")
        if not isinstance(role, str):
            raise bad_request(f"'{where}.role' must be a string", param=f"{where}.role")
        target = system if role in ("system", "developer") else texts
        collect_text(message, target)
    return messages, "\n".join(texts), "\n".join(system)


class OpenAIAdapter:
    wire: WireFormat = "openai"

    def parse(self, api: ApiKind, body: dict[str, Any]) -> CanonicalRequest:
        if api in media.MEDIA_APIS:
            return media.parse(api, body)
        model = require_str(body, "model")
        stream = optional_bool(body, "stream")
        cap: int | None = None
        cap_field: str | None = None
        for name in _CAP_FIELDS.get(api, ()):
            value = optional_int(body, name, minimum=1)
            if value is not None and cap is None:
                cap, cap_field = value, name
        input_text = ""
        system_text = ""
        if api == "chat":
            _, input_text, system_text = _parse_messages(body)
            for field in ("tools", "functions"):
                if body.get(field) is not None and not isinstance(body[field], list):
                    raise bad_request(f"'{field}' must be an array", param=field)
        elif api == "completions":
            input_text = text_field(body, "prompt", required=True)
            if cap is None:
                cap = LEGACY_COMPLETIONS_DEFAULT_MAX_TOKENS
        elif api == "embeddings":
            input_text = text_field(body, "input", required=True)
            cap = 0
        elif api == "responses":
            input_text = text_field(body, "input", required=False)
            system_text = optional_str(body, "instructions") or ""
        multiplier = 1
        for name in ("n", "best_of"):
            count = optional_int(body, name, minimum=1)
            if count is not None:
                multiplier = max(multiplier, count)
        if cap is not None and multiplier > 1:
            cap *= multiplier
        end_user = optional_str(body, "user") or optional_str(body, "safety_identifier")
        return CanonicalRequest(
            api=api,
            wire="openai",
            model=model,
            body=body,
            stream=stream,
            output_cap=cap,
            output_cap_field=cap_field,
            end_user=end_user,
            input_text=input_text,
            system_text=system_text,
            hidden_input=hidden_sources(api, body),
            tags=string_tags(body.get("metadata")),
        )

    def count_input(self, req: CanonicalRequest) -> int:
        if req.media is not None:
            return media.count_input(req)
        body = req.body
        if req.api == "chat":
            return tokens.count_chat(req.model, body["messages"], body.get("tools"),
                                     body.get("functions"),
                                     response_format=body.get("response_format"))
        if req.api == "completions":
            return tokens.count_prompt(req.model, body.get("prompt"))
        if req.api == "embeddings":
            return tokens.count_embedding_input(req.model, body.get("input"))
        if req.api == "responses":
            text = body.get("text")
            return tokens.count_responses_input(
                req.model, body.get("input"), body.get("instructions"), body.get("tools"),
                text_format=text.get("format") if isinstance(text, dict) else None)
        return tokens.count_text(req.model, req.input_text)

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        """Ask for usage on streams even when the client did not (it is stripped again)."""
        body = req.body
        if req.stream and req.api in ("chat", "completions") and not wants_usage_chunk(body):
            options = body.get("stream_options")
            body = dict(body)
            merged = dict(options) if isinstance(options, dict) else {}
            merged["include_usage"] = True
            body["stream_options"] = merged
        return body

    def usage_from_body(self, api: ApiKind, payload: Any) -> Usage | None:
        if not isinstance(payload, dict):
            return None
        return usage_from_response(api, payload)

    def observer(self, req: CanonicalRequest
                 ) -> OpenAIStreamObserver | ResponsesStreamObserver | media.MediaStreamObserver:
        if req.media is not None:
            return media.MediaStreamObserver(req)
        if req.api == "responses":
            return ResponsesStreamObserver()
        return OpenAIStreamObserver(strip_usage=not wants_usage_chunk(req.body), api=req.api)


def without_added_stream_usage(body: dict[str, Any], sent: dict[str, Any] | None
                               ) -> dict[str, Any]:
    """``body`` as it goes to an upstream that refuses ``stream_options`` (``stream_usage:
    false``): the client's own ``stream_options`` (``sent``: its body, None when it spoke
    another API), never the usage the gateway asked for."""
    if "stream_options" not in body:
        return body
    out = dict(body)
    if sent is not None and "stream_options" in sent:
        out["stream_options"] = sent["stream_options"]
    else:
        del out["stream_options"]
    return out


def _details(block: Any) -> dict[str, Any]:
    return block if isinstance(block, dict) else {}


def usage_from_openai(usage: Any) -> Usage | None:
    """Chat/completions (``prompt_tokens``…) and Responses (``input_tokens``…) usage blocks.

    Audio tokens (gpt-audio, gpt-4o-audio…) are inside the prompt and completion totals;
    they are kept apart because they cost several times what text does. Two
    OpenAI-compatible dialects: DeepSeek names its cache reads ``prompt_cache_hit_tokens``
    (inside ``prompt_tokens``, as OpenAI's are); xAI counts reasoning apart from
    ``completion_tokens`` (its ``total_tokens`` adds them), so there the output is both.
    """
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:
        inp, out = usage.get("input_tokens"), usage.get("output_tokens")
        input_details = _details(usage.get("input_tokens_details"))
        output_details = _details(usage.get("output_tokens_details"))
    else:
        inp, out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        input_details = _details(usage.get("prompt_tokens_details"))
        output_details = _details(usage.get("completion_tokens_details"))
    cached_details = _details(input_details.get("cached_tokens_details"))
    output, reasoning = token_count(out), token_count(output_details.get("reasoning_tokens"))
    total = token_count(usage.get("total_tokens"))
    if reasoning and total == token_count(inp) + output + reasoning:
        output += reasoning  # reasoning counted apart from the output (xAI)
    cached = token_count(input_details.get("cached_tokens")) or \
        token_count(usage.get("prompt_cache_hit_tokens"))
    return Usage(
        input_tokens=token_count(inp),
        output_tokens=output,
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
        input_audio_tokens=token_count(input_details.get("audio_tokens")),
        output_audio_tokens=token_count(output_details.get("audio_tokens")),
        cached_audio_tokens=token_count(cached_details.get("audio_tokens")),
    )


def searches_chat_model(model: Any) -> bool:
    """Chat completions' search models (``gpt-4o-search-preview``, ``gpt-5-search-api``)
    search the web before every answer: one billed web search per call."""
    return isinstance(model, str) and "-search-" in f"{model.lower()}-"


def count_tool_calls(items: Any) -> tuple[int, int]:
    """Web searches and file searches among a Responses ``output``: each such item is one
    call the provider bills."""
    web = files = 0
    for item in items if isinstance(items, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "web_search_call":
            web += 1
        elif kind == "file_search_call":
            files += 1
    return web, files


def usage_from_response(api: ApiKind, payload: dict[str, Any]) -> Usage | None:
    """Usage of a whole answer: its ``usage`` block, the tier that served it and the
    searches it ran."""
    usage = usage_from_openai(payload.get("usage"))
    if usage is None:
        return None
    usage.service_tier = service_tier(payload.get("service_tier"))
    if api == "responses":
        usage.web_search_requests, usage.file_search_calls = count_tool_calls(
            payload.get("output"))
    elif api == "chat" and searches_chat_model(payload.get("model")):
        usage.web_search_requests = 1
    return usage


_VISIBLE_DELTAS = frozenset({
    "response.output_text.delta", "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta", "response.refusal.delta"})
_REASONING_DELTAS = frozenset({
    "response.reasoning_text.delta", "response.reasoning_summary_text.delta"})


class OpenAIStreamObserver(WatchesText):
    """Chat and completions streams: ``data: {chunk}`` events, usage in a final chunk."""

    __slots__ = ("_api", "_searches", "_strip", "_text", "_tier", "usage")

    def __init__(self, strip_usage: bool, api: ApiKind = "chat") -> None:
        self._strip = strip_usage
        self._api = api
        self._text = AnswerText()
        self._tier: str | None = None
        self._searches = False
        self.usage: Usage | None = None

    def on_event(self, event: bytes) -> bytes | None:
        _, data = event_fields(event)
        chunk = json_object(data)
        if chunk is None:
            return event
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    chat_message_text(choice.get("delta"), self._text)
                    self._text.see(choice.get("text"))
        tier = chunk.get("service_tier")
        if tier is not None:
            self._tier = service_tier(tier) or self._tier
        if self._api == "chat" and not self._searches:
            self._searches = searches_chat_model(chunk.get("model"))
        usage = chunk.get("usage")
        if usage is None and isinstance(extra := chunk.get("x_groq"), dict):
            usage = extra.get("usage")  # Groq's last chunk, with or without a usage chunk
        if usage is not None:
            self.usage = usage_from_openai(usage)
            if self.usage is not None:
                self.usage.service_tier = self._tier
                self.usage.web_search_requests = int(self._searches)
            if self._strip and not choices:
                return None
        if self._strip and b'"usage":null' in event:
            event = event.replace(b',"usage":null', b"").replace(b'"usage":null,', b"")
        return event

    def usage_is_final(self) -> bool:
        return self.usage is not None


class ResponsesStreamObserver(WatchesText):
    """Responses API streams: typed events; usage arrives with ``response.completed``.

    ``response_id`` and ``status`` are the response's as its events last showed them (a
    background response that is cut off keeps running upstream)."""

    __slots__ = ("_items", "_text", "response_id", "status", "usage")

    def __init__(self) -> None:
        self._text = AnswerText()
        self._items: dict[str, str] = {}
        self.usage: Usage | None = None
        self.response_id: str | None = None
        self.status: str | None = None

    def on_event(self, event: bytes) -> bytes | None:
        name, data = event_fields(event)
        payload = json_object(data)
        if payload is None:
            return event
        kind = payload.get("type") or name
        if kind in _VISIBLE_DELTAS:
            self._text.see(payload.get("delta"))
        elif kind in _REASONING_DELTAS:
            self._text.reason(payload.get("delta"))
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = payload.get("item")
            item = item if isinstance(item, dict) else {}
            if item.get("type") in ("web_search_call", "file_search_call"):
                # Counted as they start: a search begun before a cut is billed too.
                key = str(item.get("id") or f"#{payload.get('output_index')}")
                self._items.setdefault(key, str(item["type"]))
            elif item.get("type") in ("function_call", "custom_tool_call") and \
                    kind == "response.output_item.added":
                self._text.see(item.get("name"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = payload.get("response")
            if isinstance(response, dict):
                self.usage = usage_from_response("responses", response) or self.usage
                self._saw(response)
        elif kind in ("response.created", "response.queued", "response.in_progress"):
            response = payload.get("response")
            if isinstance(response, dict):
                self._saw(response)
        if self.usage is not None and self._items:
            seen = list(self._items.values())
            self.usage.web_search_requests = max(self.usage.web_search_requests,
                                                 seen.count("web_search_call"))
            self.usage.file_search_calls = max(self.usage.file_search_calls,
                                               seen.count("file_search_call"))
        return event

    def _saw(self, response: dict[str, Any]) -> None:
        if isinstance(response.get("id"), str):
            self.response_id = response["id"]
        if isinstance(response.get("status"), str):
            self.status = response["status"]

    def usage_is_final(self) -> bool:
        return self.usage is not None
