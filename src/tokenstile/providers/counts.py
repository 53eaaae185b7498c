"""How providers report usage, read the same way for every provider: a count in a
``usage`` block is a positive integer or nothing, a service tier a short lower-case name;
a streamed OpenAI request asks for its usage chunk with ``stream_options``.
"""

from __future__ import annotations

from typing import Any


def token_count(value: Any) -> int:
    """A reported count: a positive integer, else 0 (missing, null, negative, a bool, a
    float or a string all count as nothing)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def service_tier(value: Any) -> str | None:
    """The tier an answer says served it, or a request asks for (``default``, ``flex``,
    ``priority``, ``scale``…): trimmed, lower case, at most 32 characters; None when it is
    not a string or is blank."""
    if not isinstance(value, str):
        return None
    return value.strip().lower()[:32] or None


def wants_usage_chunk(body: dict[str, Any]) -> bool:
    """Whether a streamed OpenAI request asks for the final usage chunk
    (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
