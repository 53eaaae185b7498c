"""Input the gateway cannot count before the call, and the worst case reserved for it.

Some requests are billed for input the gateway never sees: a Responses call with
``previous_response_id`` or ``conversation`` pays for the whole earlier conversation, a
stored ``prompt`` for its text, a file referenced by id or URL for its pages, an MCP tool
for the tool list the provider fetches. Counting only what is visible would let such a
request through a hard limit that its bill then passes, so its input is reserved at a
worst case instead: ``hidden_input.max_tokens`` for the model when the operator set one
(on top of what is visible), else the model's context window (no call can have more
input), else ``hidden_input.fallback_tokens``. The upstream's usage settles the real
amount afterwards.

Images given by URL are not hidden input: their cost is bounded by the providers' image
formulas, and ``tokens`` counts them at that bound.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from tokenstile.tokens import inline_file_pages

if TYPE_CHECKING:
    from tokenstile.config import HiddenInputConfig
    from tokenstile.prices import Pricer

__all__ = ["HiddenInput", "WorstCase", "describe_sources", "hidden_sources"]

_MAX_DEPTH: Final = 24
_WORDS: Final = {
    "previous_response_id": "previous_response_id",
    "conversation": "conversation",
    "prompt": "a stored prompt",
    "item_reference": "an item_reference",
    "file": "a file given by id or URL, or one whose pages cannot be read",
    "document": "a document given by URL or file id, or one whose pages cannot be read",
    "mcp": "an MCP tool (its tool list is fetched by the provider)",
    "inline_data": "inline data (an image, audio, video or document sent as bytes)",
    "file_data": "a file given by URI",
    "cached_content": "cachedContent (a cache of earlier input)",
}


def describe_sources(sources: tuple[str, ...] | list[str]) -> str:
    return ", ".join(_WORDS.get(s, s) for s in sources)


def hidden_sources(api: str, body: Mapping[str, Any]) -> tuple[str, ...]:
    """What in this request adds input the gateway cannot count, in a stable order."""
    found: set[str] = set()
    if api == "responses":
        if body.get("previous_response_id"):
            found.add("previous_response_id")
        if body.get("conversation"):
            found.add("conversation")
        if isinstance(body.get("prompt"), Mapping):
            found.add("prompt")
        _walk(body.get("input"), found, 0)
        _tools(body.get("tools"), found)
    elif api == "chat":
        _walk(body.get("messages"), found, 0)
    elif api == "messages":
        _walk(body.get("messages"), found, 0)
        _walk(body.get("system"), found, 0)
        if body.get("mcp_servers"):
            found.add("mcp")
    return tuple(sorted(found))


def _tools(tools: object, found: set[str]) -> None:
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, Mapping) and tool.get("type") == "mcp":
                found.add("mcp")


# Parts whose output (a tool's result) is itself a list of parts.
_NESTING: Final = frozenset({"tool_result", "function_call_output",
                             "custom_tool_call_output"})


def _walk(node: object, found: set[str], depth: int) -> None:
    """Messages, items and content parts (JSON: plain lists and dicts); only the kinds that
    can hide input are looked at closely, so a long conversation costs a dict lookup a
    part."""
    if depth > _MAX_DEPTH:
        return
    if type(node) is not list:
        if type(node) is dict:
            _part(node, found, depth)
        return
    for item in node:
        if type(item) is dict:
            _part(item, found, depth + 1)


def _part(node: dict[str, Any], found: set[str], depth: int) -> None:
    kind = node.get("type")
    if kind == "item_reference":
        found.add("item_reference")
    elif kind == "input_file":  # Responses
        if not _readable(node):
            found.add("file")
    elif kind == "file":  # chat completions
        inner = node.get("file")
        if not (isinstance(inner, dict) and _readable(inner)):
            found.add("file")
    elif kind == "document":  # Anthropic
        source = node.get("source")
        source_kind = source.get("type") if isinstance(source, dict) else None
        if source_kind == "content" and isinstance(source, dict):
            _walk(source.get("content"), found, depth + 1)
        elif source_kind != "text" and not (
                source_kind == "base64" and isinstance(source, dict)
                and inline_file_pages(source.get("data")) is not None):
            found.add("document")
    content = node.get("content")
    if type(content) is list:
        _walk(content, found, depth + 1)
    if kind in _NESTING:
        _walk(node.get("output"), found, depth + 1)


def _readable(part: Mapping[str, Any]) -> bool:
    """An inline file whose pages can be counted (``tokens`` prices each page)."""
    if part.get("file_id") or part.get("file_url"):
        return False
    return inline_file_pages(part.get("file_data")) is not None


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The input tokens to reserve (visible input included) and where that figure comes
    from, for messages and the ledger."""

    tokens: int
    basis: str


class HiddenInput:
    """Sizes the worst case of a request with hidden input, per model."""

    def __init__(self, config: HiddenInputConfig, pricer: Pricer) -> None:
        self.fallback = config.fallback_tokens
        self.pricer = pricer
        self._exact: dict[str, tuple[str, int]] = {}
        patterns: list[tuple[str, str, int]] = []
        for key, value in config.max_tokens.items():
            name = key.strip().lower()
            if any(ch in name for ch in "*?["):
                patterns.append((name, key, value))
            else:
                self._exact[name] = (key, value)
        patterns.sort(key=lambda p: -len(p[0]))
        self._patterns = tuple(patterns)

    def configured(self, model: str) -> tuple[str, int] | None:
        """The ``hidden_input.max_tokens`` entry that applies to ``model``: (key, tokens)."""
        name = model.strip().lower()
        bare = name.rsplit("/", 1)[1] if "/" in name else name
        for candidate in (name, bare):
            if candidate in self._exact:
                return self._exact[candidate]
        for pattern, key, value in self._patterns:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(bare, pattern):
                return key, value
        return None

    def worst_case(self, model: str, visible: int) -> WorstCase:
        window = self.pricer.context_window(model)
        entry = self.configured(model)
        if entry is not None:
            key, extra = entry
            tokens = visible + extra
            if window is not None:
                tokens = min(tokens, max(window, visible))
            return WorstCase(tokens, f"hidden_input.max_tokens[{key!r}] = {extra:,}")
        if window is not None:
            return WorstCase(max(window, visible),
                             f"the context window of {model}, {window:,} tokens")
        return WorstCase(visible + self.fallback,
                         f"hidden_input.fallback_tokens = {self.fallback:,}, as the context "
                         f"window of {model} is not known")
