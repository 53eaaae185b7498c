"""The exact-match cache key: which requests share one cached answer, and which get none.

Two requests share a key when the upstream would be asked the same question: same API, wire
format, model and every body field that can change the answer. Fields that only say who is
asking, how the answer travels or how it is billed (``stream``, ``stream_options``,
``user``, ``metadata``…) are left out, so a streamed and a non-streamed request share one
entry and attribution never splits the cache. Everything else is kept, including fields
this module has never heard of: an unknown field costs a missed hit at worst, never a wrong
answer.

Normalization is deliberately shallow: JSON object keys are sorted at every depth, and
top-level numbers (``1.0`` = ``1``), ``null`` values (= absent) and a lone ``stop`` string
(= a one-element list) are made canonical. Message text, tool schemas and the like must
match byte for byte.

Requests that get no key (:func:`uncacheable_reason` says why):

- token counting (free already);
- server-executed tools (web search, file search, code execution, MCP, image generation,
  Gemini's ``googleSearch``, ``codeExecution``, ``urlContext``…):
  their results change over time and may act in the world, and a replay would silently
  skip that. Client-executed tools (functions, custom tools, computer use, shells, editors)
  are fine: the model only proposes the call, the client carries it out;
- server-side state that a replay would not update or that changes by itself: a Responses
  ``conversation``, ``background`` mode, a stored ``prompt`` without a pinned ``version``,
  Anthropic ``container`` and ``mcp_servers``;
- bodies that are not plain JSON (e.g. integers beyond 64 bits).

``n`` > 1 and sampling at any temperature are cached: ``n`` is part of the key and a client
that wants a fresh sample can ask to skip the cache. Embeddings are cached like the rest.

For the Responses API ``store`` is part of the key: the id in an answer generated with
``store: false`` cannot be used as a ``previous_response_id`` later, so such an answer is
never replayed to a client that asked for a stored response.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from tokenstile.cache.answer import cut_by_output_cap
from tokenstile.types import CanonicalRequest

KEY_VERSION = b"tokenstile-response-cache-v1\n"

# Fields that change nothing in the answer: transport, attribution, billing, routing hints.
_OPENAI_IGNORED = frozenset({
    "model", "stream", "stream_options", "user", "safety_identifier", "metadata", "store",
    "service_tier", "prompt_cache_key", "prompt_cache_retention", "background",
})
_RESPONSES_IGNORED = _OPENAI_IGNORED - {"store"}
_ANTHROPIC_IGNORED = frozenset({"model", "stream", "metadata", "service_tier"})
_GEMINI_IGNORED = frozenset({"model", "stream"})  # the URL's, put in the body by the gateway
_GEMINI_CLIENT_TOOLS = frozenset({"functionDeclarations", "function_declarations"})

# Tool types the client executes itself (anything else runs on the provider's side).
_OPENAI_CLIENT_TOOLS = frozenset({
    "function", "custom", "computer_use_preview", "computer_use", "local_shell", "shell",
    "apply_patch",
})
_ANTHROPIC_CLIENT_TOOL_PREFIXES = ("custom", "bash_", "text_editor_", "computer_", "memory_")


def _server_tool(tools: Any, client_types: frozenset[str] | None) -> str | None:
    """The type of the first tool in ``tools`` that the provider would execute, if any."""
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if client_types is None:  # Anthropic: custom tools may omit the type
            if kind is None or (isinstance(kind, str)
                                and kind.startswith(_ANTHROPIC_CLIENT_TOOL_PREFIXES)):
                continue
            return str(kind)
        if kind not in client_types:
            return str(kind)
    return None


def _gemini_server_tool(tools: Any) -> str | None:
    """The first of a Gemini request's tools that Google runs (``googleSearch``,
    ``codeExecution``, ``urlContext``…): anything but function declarations."""
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict):
            kind: str | None = next((str(name) for name in tool
                                     if name not in _GEMINI_CLIENT_TOOLS), None)
            if kind is not None:
                return kind
    return None


def uncacheable_reason(req: CanonicalRequest) -> str | None:
    """Why this request must not be answered from (or stored in) the cache; None if it may."""
    body = req.body
    if req.api == "count_tokens":
        return "token counting is free"
    if req.wire == "bedrock":
        return "answers on Bedrock routes are not cached"
    if req.media is not None or req.files is not None or req.api == "batches":
        return "images, audio, moderations, files and batches are not cached"
    if req.wire == "gemini":
        kind = _gemini_server_tool(body.get("tools"))
    elif req.wire == "anthropic":
        if body.get("mcp_servers"):
            return "MCP servers run on the provider's side"
        if body.get("container") is not None:
            return "a code-execution container carries server-side state"
        kind = _server_tool(body.get("tools"), None)
    else:
        if req.api == "responses":
            if body.get("background") is True:
                return "background responses are fetched later, not answered"
            if body.get("conversation") is not None:
                return "a conversation is server-side state the answer would update"
            prompt = body.get("prompt")
            if isinstance(prompt, dict) and prompt.get("version") is None:
                return "a stored prompt without a pinned version can change"
        if body.get("web_search_options") is not None:
            return "web search results change over time"
        kind = _server_tool(body.get("tools"), _OPENAI_CLIENT_TOOLS)
    if kind is not None:
        return f"the server-executed tool {kind!r} may act or change over time"
    return None


def _canonical_scalar(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


def normalized_body(req: CanonicalRequest) -> dict[str, Any]:
    """The body fields that make up the key, top-level values in canonical form."""
    if req.wire == "anthropic":
        ignored = _ANTHROPIC_IGNORED
    elif req.wire == "gemini":
        ignored = _GEMINI_IGNORED
    elif req.api == "responses":
        ignored = _RESPONSES_IGNORED
    else:
        ignored = _OPENAI_IGNORED
    out: dict[str, Any] = {}
    for name, value in req.body.items():
        if name in ignored or value is None:
            continue
        if name == "stop" and isinstance(value, str):
            value = [value]
        out[name] = _canonical_scalar(value)
    if req.api == "responses" and "store" not in out:
        out["store"] = True  # the Responses API stores unless told otherwise
    return out


def cache_key(req: CanonicalRequest, namespace: str = "") -> str | None:
    """SHA-256 hex of the normalized request, or None when it must not be cached.

    ``namespace`` partitions the cache (e.g. by organization) so that tenants never see
    each other's answers, not even through a timing difference. The model is the one the
    body names (after any rewrite by routing or policies), else ``req.model``: call this on
    the request as it will be forwarded.
    """
    if uncacheable_reason(req) is not None:
        return None
    model = req.body.get("model")
    document = {
        "ns": namespace,
        "api": req.api,
        "wire": req.wire,
        "model": model if isinstance(model, str) else req.model,
        "body": normalized_body(req),
    }
    try:
        encoded = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return None
    return hashlib.sha256(KEY_VERSION + encoded).hexdigest()


def key_to_store(lookup_key: str | None, req: CanonicalRequest, body: bytes,
                 namespace: str = "") -> str | None:
    """Where to store the answer ``body`` to ``req``, looked up earlier as ``lookup_key``.

    Admission may write an output cap into the body after the lookup (a default cap for a
    request that named none, or a smaller one that fits the budget). An answer that ended by
    itself does not depend on that cap and is stored under the key the next identical
    request will look up; an answer cut by the cap is stored only under the key of the body
    as forwarded, so that it is never served to a request that allowed a longer answer.
    """
    forwarded = cache_key(req, namespace)
    if forwarded is None or lookup_key is None or forwarded == lookup_key:
        return forwarded
    return forwarded if cut_by_output_cap(req.api, req.wire, body) else lookup_key
