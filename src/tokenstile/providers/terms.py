"""What a request may be billed for beyond its text tokens, read from its body before the
call: the service tier it asks for, the cache writes it asks for, audio in or out, and the
searches it allows. Admission reserves the worst of these (``prices.ModelPrice``); the
provider's answer settles what really happened.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tokenstile.providers.converse import converse_terms
from tokenstile.providers.counts import service_tier
from tokenstile.providers.generate_content import gemini_terms
from tokenstile.providers.openai import searches_chat_model
from tokenstile.types import CanonicalRequest, PriceTerms

_MAX_BLOCKS = 4096


def terms_of(req: CanonicalRequest) -> PriceTerms:
    """The request's ``PriceTerms`` (read once, then kept on the request)."""
    if req.terms is None:
        req.terms = price_terms(req)
    return req.terms


def reservation_terms(req: CanonicalRequest, auto_tier: str | None = None) -> PriceTerms:
    """The request's terms, with ``auto_tier`` (the upstream's ``auto_service_tier``) for a
    request that leaves its tier to the provider."""
    terms = terms_of(req)
    if auto_tier and (terms.service_tier or "auto") == "auto":
        return replace(terms, service_tier=auto_tier)
    return terms


def price_terms(req: CanonicalRequest) -> PriceTerms:
    if req.media is not None:  # images, audio, moderations, batches: tokenstile.media
        return PriceTerms(media=req.media)
    body = req.body
    if req.api == "converse":
        return converse_terms(body)
    if req.wire == "gemini":
        return gemini_terms(body)
    if req.wire in ("anthropic", "bedrock"):  # Claude's Messages body, on Bedrock too
        return _anthropic(body)
    return _openai(req.api, body)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


# --- OpenAI -------------------------------------------------------------------------------


def _has_input_audio(node: Any) -> bool:
    """An ``input_audio`` part anywhere in chat messages or Responses input items."""
    items = node if isinstance(node, list) else [node]
    for item in items[:_MAX_BLOCKS]:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "input_audio":
            return True
        content = item.get("content")
        if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") == "input_audio"
                for part in content[:_MAX_BLOCKS]):
            return True
    return False


def _openai(api: str, body: dict[str, Any]) -> PriceTerms:
    tier = service_tier(body.get("service_tier"))
    if api == "chat":
        modalities = body.get("modalities")
        audio_out = (isinstance(modalities, list) and "audio" in modalities) or \
            isinstance(body.get("audio"), dict)
        return PriceTerms(service_tier=tier, audio_input=_has_input_audio(body.get("messages")),
                          audio_output=audio_out,
                          web_searches=1 if searches_chat_model(body.get("model")) else 0)
    if api == "responses":
        tools = body.get("tools")
        kinds = {str(tool.get("type")) for tool in tools if isinstance(tool, dict)} \
            if isinstance(tools, list) else set()
        # Built-in tool calls are bounded only by max_tool_calls; unbounded ones are
        # settled from the answer.
        most = _count(body.get("max_tool_calls")) or 0
        web = any(kind.startswith("web_search") for kind in kinds)
        return PriceTerms(service_tier=tier, audio_input=_has_input_audio(body.get("input")),
                          web_searches=most if web else 0,
                          file_searches=most if "file_search" in kinds else 0)
    return PriceTerms(service_tier=tier)


# --- Anthropic ----------------------------------------------------------------------------


def _cache_ttl(node: Any, found: str | None) -> str | None:
    """The longest lifetime any ``cache_control`` in ``node``'s blocks asks for."""
    blocks = node if isinstance(node, list) else [node]
    for block in blocks[:_MAX_BLOCKS]:
        if not isinstance(block, dict):
            continue
        control = block.get("cache_control")
        if isinstance(control, dict):
            found = "1h" if control.get("ttl") == "1h" or found == "1h" else "5m"
            if found == "1h":
                return found
        content = block.get("content")
        if isinstance(content, list):
            found = _cache_ttl(content, found)
            if found == "1h":
                return found
    return found


def _anthropic(body: dict[str, Any]) -> PriceTerms:
    # Messages: "auto" (the default) may use priority capacity; "standard_only" may not.
    asked = service_tier(body.get("service_tier"))
    tier = "standard" if asked == "standard_only" else None
    ttl = _cache_ttl(body, None)  # top-level cache_control: automatic caching
    for part in ("system", "tools", "messages"):
        if ttl != "1h":
            ttl = _cache_ttl(body.get(part), ttl)
    searches = 0
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search"):
            most = _count(tool.get("max_uses"))
            if most is None:  # unbounded: settled from the answer
                searches = 0
                break
            searches += most
    return PriceTerms(service_tier=tier, cache_write=ttl, web_searches=searches)
