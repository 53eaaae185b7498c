"""Gemini's embedding methods, as plain values: ``embedContent`` (one ``content``) and
``batchEmbedContents`` (``requests``, each an ``embedContent`` request naming the model),
checked, counted and read back.

A request embeds the text parts of its content, and its ``title`` (a document's title,
embedded with it when ``taskType`` is ``RETRIEVAL_DOCUMENT``). Inline and file data (images
and documents, for the multimodal embedding models) are hidden input. Every request of a
batch must name the model of the URL, as Google requires; the gateway writes the model it
serves into each (a route may serve another one). A batch holds at most
``server.max_messages`` requests, as every list a request is made of (``gateway.intake``).

Usage is the answer's ``usageMetadata.promptTokenCount`` when Google sends one; an answer
without it is billed at the gateway's own count (o200k × ``GEMINI_FACTOR``, on the safe
side, Gemini's tokenizer being unpublished) and marked estimated. Embeddings generate no
output: the output cap is 0.
"""

from __future__ import annotations

import math
from typing import Any, Final

from tokenstile import tokens
from tokenstile.errors import bad_request
from tokenstile.providers.counts import token_count
from tokenstile.providers.gemini_fields import get
from tokenstile.providers.generate_content import (
    GEMINI_FACTOR,
    check_content,
    hidden_parts,
    parts_text,
)
from tokenstile.types import ApiKind, Usage

EMBED_APIS: Final = ("embed_content", "batch_embed_contents")


def model_name(model: str) -> str:
    """``models/{model}``: how a batch's requests name their model."""
    return model if model.startswith("models/") else f"models/{model}"


def embed_requests(api: ApiKind, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The embedContent requests a body holds, each with where it is in the body (for the
    errors), checked as Google checks them: a 400 for what it would refuse."""
    if api == "embed_content":
        return [("", body)]
    requests = get(body, "requests")
    if requests is None:
        raise bad_request("'requests' is required", param="requests",
                          code="missing_required_parameter")
    if not isinstance(requests, list) or not requests:
        raise bad_request("'requests' must be a non-empty array of embedContent requests",
                          param="requests")
    model = model_name(str(body.get("model", "")))
    found: list[tuple[str, dict[str, Any]]] = []
    for i, request in enumerate(requests):
        where = f"requests[{i}]."
        if not isinstance(request, dict):
            raise bad_request(f"'requests[{i}]' must be an embedContent request object",
                              param=f"requests[{i}]")
        named = request.get("model")
        if named is not None and named != model:
            raise bad_request(f"'requests[{i}].model' is {named!r}, but the batch is for "
                              f"{model!r}: every request of a batch must name the model of "
                              "its URL", param=f"requests[{i}].model")
        found.append((where, request))
    return found


def embedded_text(request: dict[str, Any]) -> list[str]:
    """What one embedContent request embeds: its content's text parts, then its title."""
    pieces: list[str] = []
    content = get(request, "content")
    if isinstance(content, dict):
        parts_text(content.get("parts"), pieces)
    title = get(request, "title")
    if isinstance(title, str) and title:
        pieces.append(title)
    return pieces


def parse_embed(api: ApiKind, body: dict[str, Any]) -> str:
    """Check an embedding request's shape; return the text it embeds."""
    texts: list[str] = []
    for where, request in embed_requests(api, body):
        content = get(request, "content")
        if content is None:
            raise bad_request(f"'{where}content' is required", param=f"{where}content",
                              code="missing_required_parameter")
        check_content(content, f"{where}content", role=False)
        title = get(request, "title")
        if title is not None and not isinstance(title, str):
            raise bad_request(f"'{where}title' must be a string", param=f"{where}title")
        texts += embedded_text(request)
    return "\n".join(texts)


def count_embed(model: str, api: ApiKind, body: dict[str, Any]) -> int:
    """Input tokens of an embedding request (an estimate on the safe side)."""
    text = sum(tokens.count_text(model, piece)
               for _, request in embed_requests(api, body) for piece in embedded_text(request))
    return math.ceil(text * GEMINI_FACTOR - 1e-9)


def hidden_embed(api: ApiKind, body: dict[str, Any]) -> tuple[str, ...]:
    """Input the gateway cannot count: inline data and files by URI."""
    found: set[str] = set()
    for _, request in embed_requests(api, body):
        hidden_parts(get(request, "content"), found)
    return tuple(sorted(found))


def with_model(api: ApiKind, body: dict[str, Any]) -> dict[str, Any]:
    """A batch whose every request names the body's ``model`` (the one served, from the
    URL or a route)."""
    if api != "batch_embed_contents":
        return body
    name = model_name(str(body.get("model", "")))
    requests = get(body, "requests")
    return {**body, "requests": [{**request, "model": name} for request in requests]}


def usage_of_embedding(payload: Any) -> Usage | None:
    """The input an answer says it embedded (None when it does not say)."""
    meta = payload.get("usageMetadata") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("promptTokenCount") is None:
        return None
    return Usage(input_tokens=token_count(meta.get("promptTokenCount")))
