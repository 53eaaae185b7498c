"""OpenAI's Embeddings API served by a Gemini upstream: ``/v1/embeddings`` with a Gemini
embedding model becomes one ``batchEmbedContents`` call, and its answer an OpenAI list of
embeddings.

``input`` (a string or an array of strings) becomes one request per string, ``dimensions``
each request's ``outputDimensionality``; token arrays have no Gemini form and are refused.
The answer's vectors keep their order; ``encoding_format: base64`` packs each as
little-endian float32, as OpenAI does. Its ``usage`` is Google's ``promptTokenCount``, else
the gateway's own count (the one it bills, see ``providers.embed_content``).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from tokenstile.errors import GatewayError, bad_request
from tokenstile.providers.base import StreamObserver, forwarded_body, require_str
from tokenstile.providers.embed_content import count_embed, model_name, usage_of_embedding
from tokenstile.providers.gemini_translate import gemini_error_to_openai
from tokenstile.providers.mapping import TranslatedBody
from tokenstile.types import ApiKind, CanonicalRequest, Usage

_API: ApiKind = "batch_embed_contents"


def _inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
        return list(raw)
    if isinstance(raw, list) and raw and all(isinstance(i, (int, list)) for i in raw):
        raise bad_request("'input' holds token ids, which a Gemini embedding model does not "
                          "take: send the text", param="input")
    raise bad_request("'input' must be a non-empty string or array of strings",
                      param="input")


def embeddings_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """The ``batchEmbedContents`` body of an OpenAI embeddings request."""
    model = require_str(body, "model")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int)
                                   or isinstance(dimensions, bool) or dimensions < 1):
        raise bad_request("'dimensions' must be a positive integer", param="dimensions")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'",
                          param="encoding_format")
    if body.get("stream") is True:
        raise bad_request("embeddings are not streamed", param="stream")
    extra = {"outputDimensionality": dimensions} if dimensions is not None else {}
    return {"model": model, "requests": [
        {"model": model_name(model), "content": {"parts": [{"text": text}]}, **extra}
        for text in _inputs(body)]}


def _vectors(parsed: Any) -> list[list[float]] | None:
    """The vectors of a ``batchEmbedContents`` answer, or None when it is not one."""
    embeddings = parsed.get("embeddings") if isinstance(parsed, dict) else None
    if not isinstance(embeddings, list):
        return None
    vectors = []
    for embedding in embeddings:
        values = embedding.get("values") if isinstance(embedding, dict) else None
        if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return None
        vectors.append(values)
    return vectors


class EmbeddingsOverGemini(TranslatedBody):
    """An OpenAI embeddings request served by a Gemini upstream (``batchEmbedContents``)."""

    upstream_api: ApiKind = _API

    __slots__ = ("_base64",)

    def __init__(self, body: dict[str, Any], default_max_tokens: int) -> None:
        super().__init__(body, default_max_tokens)
        self._base64 = body.get("encoding_format") == "base64"

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return embeddings_to_gemini(body)

    def count_input(self) -> int:
        return count_embed(self.model, _API, self._translated)

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        return forwarded_body(self.follow(req.body))

    def usage_from_body(self, payload: Any) -> Usage | None:
        return usage_of_embedding(payload)

    def response_body(self, payload: bytes, parsed: Any) -> tuple[bytes, Any]:
        vectors = _vectors(parsed)
        if vectors is None:  # not an answer of embeddings: passed on as it came
            return payload, parsed
        data = []
        for index, values in enumerate(vectors):
            vector: Any = values
            if self._base64:
                try:
                    vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
                except OverflowError:  # past float32: not an embedding
                    return payload, parsed
            data.append({"object": "embedding", "index": index, "embedding": vector})
        usage = usage_of_embedding(parsed)
        tokens = usage.input_tokens if usage is not None else self.count_input()
        answer = {"object": "list", "data": data, "model": self.model,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return orjson.dumps(answer), answer

    def error_body(self, status: int, payload: bytes) -> bytes:
        return gemini_error_to_openai(status, payload)

    def observer(self, req: CanonicalRequest) -> StreamObserver:
        raise GatewayError(400, "embeddings are not streamed", param="stream")
