"""Tool-call arguments in answers: what a model writes for a tool is checked like its text.

OpenAI-shaped answers carry the arguments as a string of JSON (a chat answer's
``tool_calls[].function.arguments``, a Responses ``function_call`` item's ``arguments``),
Anthropic ones as an object (a ``tool_use`` block's ``input``). Every string value in them,
at any depth, is scanned with the answer's finders (after JSON unescaping, so ``\\u0062ad``
is ``bad``); a redaction rewrites the value, and arguments that were a string are written
again as JSON. Arguments that are not JSON (a model can write anything, a cut stream
leaves half of it) are scanned as they are. Object keys come from the tool's schema, the
application's own text, and are left alone.

A streamed answer sends its arguments in pieces that only make sense together, so they
are gathered until the tool call ends and checked whole (see ``policies.stream``).
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenstile.policies.scanner import Finder, Span, scan_whole


def _walk(value: Any, finders: list[Finder], spans: list[Span]) -> tuple[Any, bool]:
    """``value`` with every string in it scanned: the new value, and whether it changed."""
    if isinstance(value, str):
        text, found = scan_whole(value, finders)
        spans.extend(found)
        return text, text != value
    if isinstance(value, list):
        changed = False
        items: list[Any] = []
        for item in value:
            new, moved = _walk(item, finders, spans)
            items.append(new)
            changed = changed or moved
        return (items if changed else value), changed
    if isinstance(value, dict):
        changed = False
        fields: dict[Any, Any] = {}
        for key, item in value.items():
            new, moved = _walk(item, finders, spans)
            fields[key] = new
            changed = changed or moved
        return (fields if changed else value), changed
    return value, False


def scan_arguments(raw: str, finders: list[Finder]) -> tuple[str, list[Span]]:
    """Arguments given as a string of JSON: the string to send, and what was found."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return scan_whole(raw, finders)
    spans: list[Span] = []
    new, changed = _walk(value, finders, spans)
    return (orjson.dumps(new).decode() if changed else raw), spans


def scan_input(value: Any, finders: list[Finder]) -> tuple[Any, list[Span]]:
    """Arguments given as an object: the object to send, and what was found."""
    spans: list[Span] = []
    new, _ = _walk(value, finders, spans)
    return new, spans


def scan_tool_value(value: Any, finders: list[Finder]) -> tuple[Any, list[Span]]:
    """Either form: a string is JSON text, anything else the arguments themselves."""
    if isinstance(value, str):
        return scan_arguments(value, finders)
    return scan_input(value, finders)
