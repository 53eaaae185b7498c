"""Output caps: what a request may write, and the cap the gateway writes into its body."""

from __future__ import annotations

from typing import Any

from tokenstile.types import CanonicalRequest

# The smallest cap the gateway shrinks a cap it supplied to (below it, the request waits
# for the budget instead).
MIN_SUPPLIED_CAP = 16


def reserved_input(req: CanonicalRequest) -> int:
    """The input a reservation holds: what was counted plus the worst case of what could
    not be."""
    return req.input_tokens + req.hidden_input_tokens


def output_cap_field(req: CanonicalRequest) -> str:
    if req.api == "responses":
        return "max_output_tokens"
    if req.api == "converse":
        return "inferenceConfig.maxTokens"
    if req.api == "generate_content":
        return "generationConfig.maxOutputTokens"
    if req.api == "chat" and req.model.startswith(("o1", "o3", "o4", "gpt-5")):
        return "max_completion_tokens"
    return "max_tokens"


def answers(body: dict[str, Any]) -> int:
    """Answers one request asks for (``n``, ``best_of``): each may use the whole cap."""
    values = [v for k in ("n", "best_of") if isinstance(v := body.get(k), int) and v > 1]
    return max(values, default=1)


def set_output_cap(req: CanonicalRequest, cap: int) -> None:
    """Write the cap (per answer) into the body that will be forwarded (the client's copy is
    untouched); the worst case, ``req.output_cap``, counts every answer asked for. A dotted
    field (Bedrock's ``inferenceConfig.maxTokens``) is written into its object. Gemini's
    cap also bounds its thinking (``providers.generate_content.set_gemini_cap``)."""
    if req.api == "generate_content":
        from tokenstile.providers.generate_content import set_gemini_cap

        set_gemini_cap(req, cap)
        return
    name = req.output_cap_field or output_cap_field(req)
    outer, dot, inner = name.partition(".")
    if dot:
        nested = req.body.get(outer)
        req.body = {**req.body, outer: {**(nested if isinstance(nested, dict) else {}),
                                        inner: cap}}
    else:
        req.body = {**req.body, name: cap}
    req.output_cap, req.output_cap_field = cap * answers(req.body), name


def requested_cap(req: CanonicalRequest) -> tuple[str | None, Any, int]:
    """The output cap a request sets, as the max_tokens policy reads it: the field as the
    client spelled it, its value, and what thinking the value includes. A Gemini cap is
    ``maxOutputTokens`` or ``max_output_tokens`` plus the thinking its ``thinkingConfig``
    allows (``providers.generate_content.requested_cap``)."""
    if req.api == "generate_content":
        from tokenstile.providers.generate_content import requested_cap as gemini_cap

        return gemini_cap(req.model, req.body)
    field = req.output_cap_field
    return field, cap_value(req.body, field), 0


def cap_value(body: dict[str, Any], field: str | None) -> Any:
    """The value of an output cap field in a body (a dotted field inside its object)."""
    if not field:
        return None
    outer, dot, inner = field.partition(".")
    if not dot:
        return body.get(field)
    nested = body.get(outer)
    return nested.get(inner) if isinstance(nested, dict) else None
