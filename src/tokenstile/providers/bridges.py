"""Which bridge serves a request whose client and upstream speak different wire formats."""

from __future__ import annotations

from typing import Any

from tokenstile.errors import GatewayError
from tokenstile.providers.base import Bridge
from tokenstile.providers.bedrock_translate import bedrock_bridge
from tokenstile.providers.embeddings_over_gemini import EmbeddingsOverGemini
from tokenstile.providers.gemini_translate import gemini_bridge
from tokenstile.providers.messages_over_chat import MessagesOverChat
from tokenstile.providers.translate import ChatOverMessages
from tokenstile.types import ApiKind, WireFormat

_API_NAMES: dict[str, str] = {
    "chat": "chat completions", "completions": "completions", "embeddings": "embeddings",
    "responses": "Responses", "messages": "Messages", "count_tokens": "token counting",
}


def bridge_for(api: ApiKind, client_wire: WireFormat, upstream_wire: WireFormat,
               upstream: str, body: dict[str, Any], default_max_tokens: int) -> Bridge:
    """The bridge serving ``api`` (sent in ``client_wire``) from an upstream speaking
    ``upstream_wire``, or a 400 saying why there is none."""
    if "bedrock" in (client_wire, upstream_wire):
        return bedrock_bridge(api, client_wire, upstream_wire, upstream, body,
                              default_max_tokens)
    if (client_wire, upstream_wire, api) == ("openai", "gemini", "embeddings"):
        return EmbeddingsOverGemini(body, default_max_tokens)
    if "gemini" in (client_wire, upstream_wire):
        return gemini_bridge(api, client_wire, upstream_wire, upstream, body,
                             default_max_tokens)
    model = body.get("model")
    if client_wire == "anthropic" and upstream_wire == "openai" and api == "messages":
        return MessagesOverChat(body, default_max_tokens)
    if client_wire == "openai" and upstream_wire == "anthropic":
        if api == "chat":
            return ChatOverMessages(body, default_max_tokens)
        raise GatewayError(
            400, f"the {_API_NAMES.get(api, api)} API is not supported by the anthropic "
                 f"upstream {upstream!r} that serves the model {model!r}; call Claude models "
                 "through /v1/chat/completions or /v1/messages",
            code="unsupported_api")
    raise GatewayError(
        400, f"the token counting API (/v1/messages/count_tokens) needs an anthropic "
             f"upstream, but the model {model!r} is served by the OpenAI-compatible upstream "
             f"{upstream!r}; read the input tokens from /v1/messages's usage instead, or "
             "route the model to an upstream of kind anthropic",
        code="unsupported_api")
