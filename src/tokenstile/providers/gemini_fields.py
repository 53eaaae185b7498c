"""How the gateway reads Gemini's request and answer objects: a field by its JSON name or
its proto name (Google reads both, and the ``google-genai`` SDK writes some fields in snake
case), and at most ``MAX_PARTS`` parts of one content."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

MAX_PARTS = 4096


@lru_cache(maxsize=256)
def snake(name: str) -> str:
    """A lowerCamelCase field name as the proto field it is (``maxOutputTokens`` ->
    ``max_output_tokens``)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def get(node: Any, name: str) -> Any:
    """A field of a request object by its JSON name, or by its proto name: Google reads
    both (the ``google-genai`` SDK writes ``thinkingConfig``'s fields in snake case)."""
    if not isinstance(node, dict):
        return None
    value = node.get(name)
    return node.get(snake(name)) if value is None else value
