"""Amazon Titan Text Embeddings on Bedrock's InvokeModel
(``/model/amazon.titan-embed-text-v2:0/invoke``), as plain values.

A request is ``inputText`` (the text to embed) with, on v2, ``dimensions`` (256, 512 or
1024), ``normalize`` and ``embeddingTypes`` (``float``, ``binary``). The answer's
``inputTextTokenCount`` is its usage; an answer without it is billed at the gateway's count
(o200k × ``TITAN_FACTOR``, Titan's tokenizer being unpublished) and flagged estimated.
Embeddings generate no output: the output cap is 0, and they do not stream.
"""

from __future__ import annotations

import math
from typing import Any, Final

from tokenstile import tokens
from tokenstile.errors import bad_request
from tokenstile.providers.base import require_str
from tokenstile.providers.counts import token_count
from tokenstile.types import Usage

TITAN_FACTOR: Final = 1.15
"""Titan tokens per o200k token, rounded up: the count before the call stays on the safe
side (the answer's ``inputTextTokenCount`` settles it)."""
DIMENSIONS: Final = (256, 512, 1024)
EMBEDDING_TYPES: Final = ("float", "binary")


def is_titan_embedding(model: str) -> bool:
    """A Titan text embedding model, by its id (or the ARN that ends in it)."""
    return "amazon.titan-embed-text" in model


def parse_titan(body: dict[str, Any]) -> str:
    """Check a Titan embedding request as Bedrock checks it (a 400 for what it refuses);
    return the text it embeds."""
    if body.get("stream") is True:
        raise bad_request("Titan embeddings are not streamed: call /invoke, not "
                          "/invoke-with-response-stream", param="stream")
    text = require_str(body, "inputText")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool)
                                   or dimensions not in DIMENSIONS):
        raise bad_request(f"'dimensions' must be one of {', '.join(map(str, DIMENSIONS))}",
                          param="dimensions")
    normalize = body.get("normalize")
    if normalize is not None and not isinstance(normalize, bool):
        raise bad_request("'normalize' must be true or false", param="normalize")
    kinds = body.get("embeddingTypes")
    if kinds is not None and not (isinstance(kinds, list) and kinds
                                  and all(k in EMBEDDING_TYPES for k in kinds)):
        raise bad_request("'embeddingTypes' must be a non-empty array of 'float' and "
                          "'binary'", param="embeddingTypes")
    return text


def count_titan(model: str, body: dict[str, Any]) -> int:
    """Input tokens of a Titan embedding request (an estimate on the safe side)."""
    text = body.get("inputText")
    counted = tokens.count_text(model, text) if isinstance(text, str) else 0
    return math.ceil(counted * TITAN_FACTOR - 1e-9)


def usage_of_titan(payload: Any) -> Usage | None:
    """The input an answer says it embedded (None when it does not say)."""
    if not isinstance(payload, dict) or payload.get("inputTextTokenCount") is None:
        return None
    return Usage(input_tokens=token_count(payload.get("inputTextTokenCount")))
