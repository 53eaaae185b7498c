"""Trim a conversation to an input budget: keep the system prompt and the most recent turns
that fit, never separating an assistant's tool calls from their results.

Pure functions: the token count is passed in, so the same code serves OpenAI, Anthropic,
Converse and Gemini message shapes (Gemini's ``contents``: ``role`` user/model, ``parts``)
and is tested with plain values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Message = dict[str, Any]
CountFn = Callable[[list[Message]], int]
Truncate = Literal["start", "middle"]
ELLIPSIS = " … "


@dataclass(frozen=True, slots=True)
class Trimmed:
    messages: list[Message]
    dropped: int
    truncated: bool


def _units(messages: Sequence[Message]) -> list[list[Message]]:
    """Group messages so that a tool call and its results move together.

    OpenAI: an assistant message with ``tool_calls`` and the ``tool`` messages after it.
    Anthropic: an assistant turn with ``tool_use`` blocks and the user turn carrying the
    matching ``tool_result`` blocks (Bedrock's Converse: ``toolUse`` and ``toolResult``).
    Gemini: a model content with ``functionCall`` parts and the user content with the
    ``functionResponse`` parts after it.
    """
    units: list[list[Message]] = []
    for message in messages:
        if units and _continues_tool_exchange(units[-1], message):
            units[-1].append(message)
        else:
            units.append([message])
    return units


def _tool_ids_called(message: Message) -> set[str]:
    ids: set[str] = set()
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            ids.add(call["id"])
    content = message.get("content")
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_use" and \
                    isinstance(block.get("id"), str):
                ids.add(block["id"])
            use = block.get("toolUse") if isinstance(block, dict) else None
            if isinstance(use, dict) and isinstance(use.get("toolUseId"), str):
                ids.add(use["toolUseId"])
    for part in _parts(message):
        call = part.get("functionCall") or part.get("function_call")
        if isinstance(call, dict):  # Gemini's calls pair by order, an id is optional
            ids.add(str(call.get("id") or call.get("name") or "call"))
    return ids


def _parts(message: Message) -> list[dict[str, Any]]:
    """A Gemini content's parts (none for other shapes)."""
    parts = message.get("parts")
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _answers_tool(message: Message) -> bool:
    if message.get("role") == "tool":
        return True
    if _role(message) == "user" and any("functionResponse" in p or "function_response" in p
                                       for p in _parts(message)):
        return True
    content = message.get("content")
    return message.get("role") == "user" and isinstance(content, list) and any(
        isinstance(b, dict) and (b.get("type") == "tool_result" or "toolResult" in b)
        for b in content)


def _role(message: Message) -> Any:
    """The message's role; a Gemini content without one is the user's."""
    role = message.get("role")
    return "user" if role is None and "parts" in message else role


def _continues_tool_exchange(unit: list[Message], message: Message) -> bool:
    return any(_tool_ids_called(m) for m in unit) and _answers_tool(message)


def _is_system(message: Message) -> bool:
    return message.get("role") in ("system", "developer")


def truncate_text(text: str, fits: Callable[[str], bool], how: Truncate) -> str | None:
    """The longest cut of ``text`` (from its start, or out of its middle) that fits."""
    if fits(text):
        return text
    lo, hi = 0, len(text)
    best: str | None = None
    while lo <= hi:
        keep = (lo + hi) // 2
        if how == "start":
            candidate = ELLIPSIS.lstrip() + text[len(text) - keep:] if keep else ""
        else:
            head = keep // 2
            candidate = text[:head] + ELLIPSIS + text[len(text) - (keep - head):] if keep \
                else ""
        if candidate and fits(candidate):
            best = candidate
            lo = keep + 1
        else:
            hi = keep - 1
    return best


def trim_messages(messages: Sequence[Message], budget: int, count: CountFn,
                  truncate: Truncate | None = "middle",
                  must_start_with_user: bool = False) -> Trimmed | None:
    """Keep what fits in ``budget`` tokens, newest first; None when even the system prompt
    and a truncated newest turn cannot fit."""
    messages = list(messages)
    if count(messages) <= budget:
        return Trimmed(messages, 0, False)
    lead = 0
    while lead < len(messages) and _is_system(messages[lead]):
        lead += 1
    system, rest = messages[:lead], messages[lead:]
    units = _units(rest)
    kept: list[list[Message]] = []
    for unit in reversed(units):
        candidate = [m for u in [unit, *kept] for m in u]
        if count(system + candidate) <= budget:
            kept.insert(0, unit)
        else:
            break
    if must_start_with_user:
        while kept and _role(kept[0][0]) != "user":
            kept.pop(0)
    if kept:
        flat = [m for u in kept for m in u]
        return Trimmed(system + flat, len(messages) - len(system) - len(flat), False)
    if truncate is None or not units:
        return None
    newest = units[-1]
    last = newest[-1]
    if len(newest) != 1 or not isinstance(last.get("content"), str):
        return None

    def fits(text: str) -> bool:
        return count([*system, {**last, "content": text}]) <= budget

    cut = truncate_text(last["content"], fits, truncate)
    if cut is None:
        return None
    return Trimmed([*system, {**last, "content": cut}], len(rest) - 1, True)
