"""Token arithmetic, directives and reply planning for the fake upstream.

Kept apart from the wire formats: everything here is provider-neutral and decides *what*
the fake answers (how many tokens in and out, which failure to act out); the wire
module only decides how that is spelled for OpenAI or Anthropic.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Literal

import orjson
import tiktoken

from tokenstile.tokens import ensure_offline_encodings

__all__ = [
    "VOCABULARY",
    "DirectiveError",
    "Directives",
    "Reply",
    "count_text",
    "parse_directives",
    "plan_reply",
    "reply_text",
]

# ---------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def encoding() -> Any:
    """o200k_base from tiktoken, loaded once, offline."""
    ensure_offline_encodings()
    return tiktoken.get_encoding("o200k_base")


def count_text(text: str) -> int:
    """Tokens in ``text`` (o200k_base, special tokens treated as plain text)."""
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))


def token_pieces(text: str) -> list[str]:
    """Split ``text`` into the strings of its tokens (ASCII text: each piece is exact)."""
    enc = encoding()
    return [enc.decode([tok]) for tok in enc.encode_ordinary(text)]


# Each word is a single o200k_base token, with or without its leading space, and a run of
# them tokenizes to exactly one token per word: output usage is exact by construction.
VOCABULARY: tuple[str, ...] = (
    "alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "sigma",
    "omega", "red", "green", "blue", "apple", "river", "stone", "cloud",
)


@lru_cache(maxsize=4096)
def reply_pieces(n: int) -> tuple[str, ...]:
    """The first ``n`` output tokens: ``alpha``, `` beta``, `` gamma``, ..."""
    words = VOCABULARY
    return tuple(
        (words[i % len(words)] if i == 0 else " " + words[i % len(words)]) for i in range(n)
    )


@lru_cache(maxsize=4096)
def reply_text(n: int) -> str:
    return "".join(reply_pieces(n))


# ---------------------------------------------------------------------------------------
# Counting a request's input: the truth the gateway must bill from
# ---------------------------------------------------------------------------------------

_IMAGE_PART_TYPES = frozenset({"image", "image_url", "input_image", "document", "input_file"})
_IMAGE_TOKENS = 85


def _json_tokens(value: object) -> int:
    return count_text(orjson.dumps(value).decode())


def count_content(content: object) -> int:
    """Tokens of a message's content: a string, or a list of parts/blocks."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += count_text(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += count_text(text)
                elif part.get("type") in _IMAGE_PART_TYPES:
                    total += _IMAGE_TOKENS
                else:
                    total += _json_tokens(part)
        return total
    return _json_tokens(content)


def count_messages(messages: object) -> int:
    """OpenAI's cookbook formula: 3 per message, +1 with a name, +3 to prime the reply."""
    total = 3
    if not isinstance(messages, list):
        return total
    for message in messages:
        total += 3
        if not isinstance(message, dict):
            total += count_content(message)
            continue
        for key, value in message.items():
            if key == "content":
                total += count_content(value)
            elif isinstance(value, str):
                total += count_text(value)
                if key == "name":
                    total += 1
            elif value is not None:
                total += _json_tokens(value)
    return total


def count_tools(tools: object) -> int:
    return _json_tokens(tools) if tools else 0


def count_format(fmt: object) -> int:
    """A structured-output setting (``response_format``, ``text.format``, Anthropic's
    ``output_format``): the provider puts it into the prompt, so it is billed as input."""
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return 0
    return _json_tokens(fmt)


def count_prompt(prompt: object) -> int:
    """Legacy completions / embeddings input: str, list of str, or token id lists."""
    if isinstance(prompt, str):
        return count_text(prompt)
    if isinstance(prompt, list):
        if all(isinstance(x, int) for x in prompt):
            return len(prompt)
        return sum(count_prompt(x) for x in prompt)
    return 0


def count_responses_input(instructions: object, items: object, tools: object,
                          text_format: object = None) -> int:
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    messages: list[object] = []
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "developer", "content": instructions})
    if isinstance(items, list):
        messages.extend(items)
    return count_messages(messages) + count_tools(tools) + count_format(text_format)


def count_anthropic_input(system: object, messages: object, tools: object,
                          output_format: object = None) -> int:
    listed: list[object] = []
    if system:
        listed.append({"role": "system", "content": system})
    if isinstance(messages, list):
        listed.extend(messages)
    return count_messages(listed) + count_tools(tools) + count_format(output_format)


# ---------------------------------------------------------------------------------------
# Where directives are read from: the last user message
# ---------------------------------------------------------------------------------------


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def last_user_text(messages: object) -> str:
    """Text of the last ``role: user`` message (chat, Responses items, Anthropic)."""
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def last_prompt_text(prompt: object) -> str:
    """Last string of a legacy prompt / embeddings / moderation input."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for item in reversed(prompt):
            if isinstance(item, str):
                return item
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                return str(item["text"])
    return ""


# ---------------------------------------------------------------------------------------
# Directives
# ---------------------------------------------------------------------------------------


class DirectiveError(ValueError):
    """A ``[[fake:...]]`` directive the fake does not understand: answered with a 400."""


@dataclass(frozen=True, slots=True)
class Directives:
    """How one request should be answered; every field defaults to "behave normally".

    status           answer with this HTTP status and the provider's error body (>= 400)
    delay_ms         wait before sending headers
    chunk_delay_ms   wait between streamed chunks
    hang             never answer; wait until the client gives up
    output_tokens    natural reply length in tokens (``max_tokens`` still cuts it)
    input_tokens     override the counted input tokens
    cut_after        stream this many content chunks, then drop the connection
                     (non-streamed: send half the body, then drop)
    error_after      stream this many content chunks, then an in-stream error event
    stall_after      stream this many content chunks, then go silent until the client leaves
    cached_tokens    input tokens served from cache (cache reads)
    cache_write_tokens input tokens written to cache (Anthropic cache_creation_input_tokens)
    cache_write_1h_tokens the part of those written for an hour (ephemeral_1h_input_tokens)
    reasoning_tokens hidden reasoning tokens, added to the output tokens
    reasoning_text   show the reasoning as text (one token a word): chat
                     ``reasoning_content``, a Responses reasoning item, an Anthropic
                     ``thinking`` block; streamed before the answer, so a cut stream has
                     emitted only the reasoning it streamed
    input_audio_tokens input tokens that are audio (prompt_tokens_details.audio_tokens)
    output_audio_tokens audio output tokens, added to the output tokens
    cached_audio_tokens the audio part of the cache reads (cached_tokens_details)
    web_searches     web searches run: Anthropic server_tool_use.web_search_requests,
                     Responses web_search_call output items
    web_fetches      Anthropic server_tool_use.web_fetch_requests
    file_searches    Responses file_search_call output items
    service_tier     the tier the answer names (else the one asked for, or the default)
    tool_call        call this tool (when the request offers tools)
    retry_after      seconds, sent as a ``retry-after`` header with an error status
    no_usage         stream without the usage chunk / omit ``usage`` (OpenAI formats;
                     Anthropic: whole answers)
    usage_dialect    ``xai``: chat usage counts reasoning apart from ``completion_tokens``
                     (``total_tokens`` adds it); ``deepseek``: cache reads as the top-level
                     ``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``; chat streams
                     end with usage on their last chunk, asked for or not, as ``usage``
                     (``mistral``) or ``x_groq.usage`` (``groq``)
    refuse_stream_options answer a chat or completions request that carries
                     ``stream_options`` with a 400, as servers that do not know the field do
                     (its streams then carry no usage chunk)
    bill_if_gone     a client that leaves during ``delay_ms`` or ``hang`` is billed its
                     whole answer anyway (a provider that finishes what it started)
    background_polls a ``background: true`` response completes on this poll (GET) of it
    background_hold  a ``background: true`` response runs until told to finish
                     (``FakeUpstream.finish_background``) or cancelled
    """

    status: int | None = None
    delay_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    hang: bool = False
    output_tokens: int | None = None
    input_tokens: int | None = None
    cut_after: int | None = None
    error_after: int | None = None
    stall_after: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cached_audio_tokens: int = 0
    web_searches: int = 0
    web_fetches: int = 0
    file_searches: int = 0
    service_tier: str | None = None
    tool_call: str | None = None
    retry_after: float | None = None
    no_usage: bool = False
    refuse_stream_options: bool = False
    usage_dialect: str | None = None
    reasoning_text: bool = False
    bill_if_gone: bool = False
    background_polls: int | None = None
    background_hold: bool = False

    @classmethod
    def merged(cls, *layers: Mapping[str, object]) -> Directives:
        """Later layers win: server defaults, then a scripted entry, then the request's text."""
        values: dict[str, object] = {}
        for layer in layers:
            values.update(layer)
        return cls(**values) if values else NORMAL  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        """Only the fields that differ from normal behaviour."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != f.default
        }


NORMAL = Directives()

_INT_KEYS = frozenset({
    "status", "output_tokens", "input_tokens", "cut_after", "error_after", "stall_after",
    "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens",
    "input_audio_tokens", "output_audio_tokens", "cached_audio_tokens", "web_searches",
    "web_fetches", "file_searches", "background_polls",
})
_FLOAT_KEYS = frozenset({"delay_ms", "chunk_delay_ms", "retry_after"})
_FLAG_KEYS = frozenset({"hang", "no_usage", "background_hold", "reasoning_text",
                        "bill_if_gone", "refuse_stream_options"})
_STR_KEYS = frozenset({"tool_call", "service_tier", "usage_dialect"})
_NULLABLE = frozenset({"status", "output_tokens", "input_tokens", "cut_after", "error_after",
                       "stall_after", "tool_call", "retry_after", "service_tier",
                       "background_polls", "usage_dialect"})
DIRECTIVE_KEYS = _INT_KEYS | _FLOAT_KEYS | _FLAG_KEYS | _STR_KEYS

_DIRECTIVE_RE = re.compile(r"\[\[fake:([^\]]*)\]\]")
_SPLIT_RE = re.compile(r"[,;\s]+")
_TRUE = frozenset({"", "1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def coerce_directive(key: str, value: object) -> object:
    """Check one directive and give its value the field's type."""
    if key not in DIRECTIVE_KEYS:
        raise DirectiveError(f"unknown fake directive {key!r}")
    if value is None and key in _NULLABLE:
        return None
    try:
        if key in _FLAG_KEYS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(text)
        if key in _STR_KEYS:
            text = str(value).strip()
            if not text:
                raise ValueError(text)
            return text
        number: int | float
        if key in _INT_KEYS:
            if isinstance(value, bool):
                raise ValueError(value)
            number = int(str(value).strip()) if not isinstance(value, int) else value
        else:
            number = float(value) if isinstance(value, int | float) else float(str(value))
    except (TypeError, ValueError):
        raise DirectiveError(f"bad value for fake directive {key}: {value!r}") from None
    if number < 0:
        raise DirectiveError(f"fake directive {key} must not be negative")
    return number


def parse_directives(text: str) -> dict[str, object]:
    """Read every ``[[fake:key=value,...]]`` in ``text``; later ones win."""
    found: dict[str, object] = {}
    if "[[fake:" not in text:
        return found
    for body in _DIRECTIVE_RE.findall(text):
        for item in _SPLIT_RE.split(body.strip()):
            if not item:
                continue
            key, _, value = item.partition("=")
            found[key.strip()] = coerce_directive(key.strip(), value)
    return found


def directive_layer(spec: str | Mapping[str, object] | Directives | None) -> dict[str, object]:
    """Normalise a directive spec (text, mapping or ``Directives``) into one layer."""
    if spec is None:
        return {}
    if isinstance(spec, Directives):
        return spec.as_dict()
    if isinstance(spec, str):
        return parse_directives(spec)
    return {key: coerce_directive(key, value) for key, value in spec.items()}


# ---------------------------------------------------------------------------------------
# Planning a reply
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    """What the model "generates": text pieces (one token each) or one tool call."""

    pieces: Sequence[str]
    finish: Literal["stop", "length", "tool"]
    tool_name: str | None = None
    tool_arguments: str = ""
    reasoning_tokens: int = 0
    name_tokens: int = 0
    text: str = ""
    tool_input: dict[str, object] = field(default_factory=dict)
    audio_tokens: int = 0
    show_reasoning: bool = False

    @property
    def output_tokens(self) -> int:
        """Billed output: generated tokens plus reasoning and audio."""
        return len(self.pieces) + self.name_tokens + self.reasoning_tokens + self.audio_tokens

    @property
    def reasoning_pieces(self) -> tuple[str, ...]:
        """The reasoning as streamed text (none when it is hidden)."""
        return reply_pieces(self.reasoning_tokens) if self.show_reasoning else ()

    def tokens_after(self, emitted: int) -> int:
        """Output tokens when only the first ``emitted`` frames went out: hidden reasoning
        is done before the first; shown reasoning streams ahead of the answer."""
        if not self.show_reasoning:
            return (min(emitted, len(self.pieces)) + self.name_tokens
                    + self.reasoning_tokens + self.audio_tokens)
        reasoning = min(emitted, self.reasoning_tokens)
        answer = min(emitted - reasoning, len(self.pieces))
        return reasoning + answer + (self.name_tokens + self.audio_tokens if answer else 0)


def _tool_schema(tools: object, name: str) -> Mapping[str, Any] | None:
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        spec: Mapping[str, Any] = function if isinstance(function, dict) else tool
        if spec.get("name") == name:
            schema = spec.get("parameters") or spec.get("input_schema")
            return schema if isinstance(schema, dict) else None
    return None


_SAMPLE_VALUES: dict[str, object] = {
    "string": "alpha", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {},
}


def tool_arguments(tools: object, name: str) -> dict[str, object]:
    """Arguments for ``name`` that fit its JSON schema's property types."""
    schema = _tool_schema(tools, name) or {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    args: dict[str, object] = {}
    for prop, prop_schema in properties.items():
        kind = prop_schema.get("type") if isinstance(prop_schema, dict) else None
        enum = prop_schema.get("enum") if isinstance(prop_schema, dict) else None
        if isinstance(enum, list) and enum:
            args[prop] = enum[0]
        else:
            args[prop] = _SAMPLE_VALUES.get(kind if isinstance(kind, str) else "")
    return args


def plan_reply(
    directives: Directives,
    *,
    max_tokens: int | None,
    default_output_tokens: int,
    tools: object,
) -> Reply:
    """Decide the reply: its length, why it stopped, or which tool it calls."""
    if directives.tool_call and tools:
        name = directives.tool_call
        args = tool_arguments(tools, name)
        arguments = orjson.dumps(args).decode()
        return Reply(
            pieces=token_pieces(arguments),
            finish="tool",
            tool_name=name,
            tool_arguments=arguments,
            tool_input=args,
            reasoning_tokens=directives.reasoning_tokens,
            name_tokens=count_text(name),
            audio_tokens=directives.output_audio_tokens,
            show_reasoning=directives.reasoning_text,
        )
    natural = (
        directives.output_tokens
        if directives.output_tokens is not None
        else default_output_tokens
    )
    n = natural
    finish: Literal["stop", "length"] = "stop"
    if max_tokens is not None and natural > max_tokens:
        n, finish = max_tokens, "length"
    return Reply(
        pieces=reply_pieces(n),
        finish=finish,
        reasoning_tokens=directives.reasoning_tokens,
        text=reply_text(n),
        audio_tokens=directives.output_audio_tokens,
        show_reasoning=directives.reasoning_text,
    )


def embedding_vector(seed_text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``seed_text``, exact in float32."""
    seed = zlib.crc32(seed_text.encode())
    raw = [((seed * (i + 1) * 2654435761) % 20011) / 10005.5 - 1.0 for i in range(dim)]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    packed = struct.pack(f"<{dim}f", *(x / norm for x in raw))
    return list(struct.unpack(f"<{dim}f", packed))


def first_int(body: Mapping[str, object], keys: Iterable[str]) -> int | None:
    """The first of ``keys`` in ``body`` holding a non-negative int."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
