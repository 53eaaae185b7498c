"""The text a model wrote, read from a whole answer or a stream chunk, split into what the
client sees and the model's reasoning: what the gateway counts when the provider reports no
usage (OpenAI-compatible servers such as vLLM, Ollama or LM Studio often send none).

Visible output is message text, refusals, tool names and arguments; reasoning is
``reasoning_content`` / ``reasoning`` (chat), reasoning items (Responses) and ``thinking``
blocks (Anthropic). Both are billed as output; reasoning is also reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenstile import tokens
from tokenstile.providers.gemini_fields import MAX_PARTS, get
from tokenstile.types import ApiKind

_MAX_ITEMS = 4096


@dataclass(slots=True)
class AnswerText:
    """Pieces of generated text, each counted on its own."""

    visible: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)

    def see(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.visible.append(value)

    def reason(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.reasoning.append(value)

    def count(self, model: str) -> tuple[int, int]:
        """(output tokens, reasoning tokens among them), counted with ``model``'s
        tokenizer."""
        reasoning = sum(tokens.count_text(model, piece) for piece in self.reasoning)
        return sum(tokens.count_text(model, piece) for piece in self.visible) + reasoning, \
            reasoning


class WatchesText:
    """The text half of a ``StreamObserver``, for an observer that keeps what a stream
    wrote in ``_text``."""

    __slots__ = ()
    _text: AnswerText

    def output_text(self) -> str:
        return "".join(self._text.visible)

    def reasoning_text(self) -> str:
        return "".join(self._text.reasoning)

    def answering(self) -> bool:
        return bool(self._text.visible)


def dumps_text(value: Any) -> str:
    """Compact JSON for a value that came from JSON; never raises (huge ints, odd types)."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, ValueError):
        return str(value)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else dumps_text(value)


def _items(value: Any) -> list[Any]:
    return value[:_MAX_ITEMS] if isinstance(value, list) else []


def chat_message_text(message: Any, out: AnswerText) -> None:
    """A chat ``message`` or a stream chunk's ``delta`` (they share their fields)."""
    if not isinstance(message, dict):
        return
    content = message.get("content")
    if isinstance(content, list):  # content parts, as some servers answer
        for part in _items(content):
            if isinstance(part, dict):
                out.see(part.get("text"))
                out.see(part.get("refusal"))
    else:
        out.see(content)
    out.see(message.get("refusal"))
    for call in _items(message.get("tool_calls")):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            out.see(function.get("name"))
            out.see(function.get("arguments"))
    function_call = message.get("function_call")  # the older single-function form
    if isinstance(function_call, dict):
        out.see(function_call.get("name"))
        out.see(function_call.get("arguments"))
    # Servers name the reasoning field differently, some send both with the same text.
    reasoning = message.get("reasoning_content")
    out.reason(reasoning if isinstance(reasoning, str) and reasoning
               else message.get("reasoning"))


def responses_item_text(item: Any, out: AnswerText) -> None:
    """One item of a Responses ``output``."""
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if kind == "message":
        for part in _items(item.get("content")):
            if isinstance(part, dict):
                out.see(part.get("text"))
                out.see(part.get("refusal"))
    elif kind == "function_call":
        out.see(item.get("name"))
        out.see(item.get("arguments"))
    elif kind == "custom_tool_call":
        out.see(item.get("name"))
        out.see(item.get("input"))
    elif kind == "reasoning":
        for part in (*_items(item.get("summary")), *_items(item.get("content"))):
            if isinstance(part, dict):
                out.reason(part.get("text"))


def anthropic_block_text(block: Any, out: AnswerText) -> None:
    """One Anthropic content block the model wrote."""
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    if kind == "text":
        out.see(block.get("text"))
    elif kind in ("tool_use", "server_tool_use"):
        out.see(block.get("name"))
        value = block.get("input")
        if value is not None:
            out.see(_json_text(value))
    elif kind == "thinking":
        out.reason(block.get("thinking"))


def answer_text(api: ApiKind, payload: Any) -> AnswerText:
    """Everything a whole answer of ``api`` (in the upstream's own format) generated."""
    out = AnswerText()
    if not isinstance(payload, dict):
        return out
    if api in ("chat", "completions"):
        for choice in _items(payload.get("choices")):
            if isinstance(choice, dict):
                chat_message_text(choice.get("message"), out)
                out.see(choice.get("text"))
    elif api == "responses":
        for item in _items(payload.get("output")):
            responses_item_text(item, out)
    elif api == "messages":
        for block in _items(payload.get("content")):
            anthropic_block_text(block, out)
    elif api == "converse":
        message = payload.get("output")
        message = message.get("message") if isinstance(message, dict) else None
        for block in _items(message.get("content") if isinstance(message, dict) else None):
            converse_block_text(block, out)
    elif api == "generate_content":
        for candidate in _items(payload.get("candidates")):
            gemini_candidate_text(candidate, out)
    return out


def converse_block_text(block: Any, out: AnswerText) -> None:
    """One Bedrock Converse content block the model wrote."""
    if not isinstance(block, dict):
        return
    out.see(block.get("text"))
    use = block.get("toolUse")
    if isinstance(use, dict):
        out.see(use.get("name"))
        if use.get("input") is not None:
            out.see(_json_text(use["input"]))
    reasoning = block.get("reasoningContent")
    inner = reasoning.get("reasoningText") if isinstance(reasoning, dict) else None
    if isinstance(inner, dict):
        out.reason(inner.get("text"))


def gemini_candidate_text(candidate: Any, out: AnswerText) -> None:
    """What one candidate wrote: text and function calls (visible), thoughts (reasoning)."""
    content = candidate.get("content") if isinstance(candidate, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    for part in parts[:MAX_PARTS] if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if part.get("thought") is True:
            out.reason(text)
            continue
        out.see(text)
        call = get(part, "functionCall")
        if isinstance(call, dict):
            out.see(call.get("name"))
            if call.get("args") is not None:
                out.see(dumps_text(call["args"]))
        code = get(part, "executableCode")
        if isinstance(code, dict):
            out.see(code.get("code"))
