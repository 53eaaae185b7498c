"""Batch API input files: read line by line before they are uploaded, so that the batch made
from one can be reserved at its worst case.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``; the ``body`` is parsed and
counted as the gateway parses and counts a call to that ``url`` (chat completions,
completions, embeddings, Responses, moderations). As OpenAI requires, a file holds calls to
one endpoint and one model. A chat or Responses line without an output cap gets one
(``server.default_output_tokens``, written into the line as the gateway writes it into a
request a budget needs to bound): its worst case must be finite. The file is uploaded with
those caps; ``BatchLines`` sums up what its lines may use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from tokenstile.errors import GatewayError, bad_request
from tokenstile.limits.caps import set_output_cap
from tokenstile.media import BatchLines, MediaAsk
from tokenstile.providers.multipart import FilePart
from tokenstile.types import ApiKind, CanonicalRequest

if TYPE_CHECKING:
    from tokenstile.providers.base import Adapter

# The endpoints a batch line may call, and the API each is.
ENDPOINTS: dict[str, ApiKind] = {
    "/v1/chat/completions": "chat", "/v1/completions": "completions",
    "/v1/embeddings": "embeddings", "/v1/responses": "responses",
    "/v1/moderations": "moderations",
}
MAX_LINES = 50_000  # OpenAI's limit per batch


@dataclass(frozen=True, slots=True)
class Upload:
    """A batch input file as it will be uploaded, and what its lines may use."""

    part: FilePart
    model: str
    lines: BatchLines


def _line_error(number: int, message: str) -> GatewayError:
    return bad_request(f"line {number} of the batch file: {message}", param="file",
                       code="invalid_batch_file")


def read_batch_file(part: FilePart, adapter: Adapter, default_cap: int,
                    worst_input: Callable[[CanonicalRequest, int], int]) -> Upload:
    """Parse, count and cap every line; ``worst_input(req, counted)`` is the input a line
    is reserved at (its hidden input at the worst case)."""
    model: str | None = None
    endpoint: str | None = None
    out: list[bytes] = []
    total_in = total_out = most_in = supplied = 0
    for number, raw in enumerate(part.data.splitlines(), 1):
        if not raw.strip():
            continue
        if len(out) >= MAX_LINES:
            raise _line_error(number, f"a batch holds at most {MAX_LINES:,} requests")
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _line_error(number, f"not valid JSON ({exc.msg})") from None
        body = item.get("body") if isinstance(item, dict) else None
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(body, dict) or \
                not isinstance(item.get("custom_id"), str) or item.get("method") != "POST":
            raise _line_error(number, "expected {\"custom_id\": ..., \"method\": \"POST\", "
                                      "\"url\": ..., \"body\": {...}}")
        if url not in ENDPOINTS:
            raise _line_error(number, f"url {url!r} is not one of {', '.join(ENDPOINTS)}")
        if endpoint is not None and url != endpoint:
            raise _line_error(number, f"every line must call one endpoint ({endpoint})")
        endpoint = url
        try:
            req = adapter.parse(ENDPOINTS[url], body)
        except GatewayError as err:
            raise _line_error(number, err.message.removeprefix("tokenstile: ")) from None
        if model is not None and req.model != model:
            raise _line_error(number, f"every line must use one model ({model})")
        model = req.model
        if req.output_cap is None and req.api in ("chat", "responses"):
            set_output_cap(req, default_cap)
            item["body"] = req.body
            supplied += 1
        counted = worst_input(req, adapter.count_input(req))
        total_in += counted
        most_in = max(most_in, counted)
        total_out += req.output_cap or 0
        out.append(orjson.dumps(item) if item["body"] is req.body else raw)
    if model is None or endpoint is None:
        raise bad_request("the batch file has no requests", param="file",
                          code="invalid_batch_file")
    data = b"\n".join(out) + b"\n"
    return Upload(FilePart(part.name, part.filename, part.content_type, data), model,
                  BatchLines(endpoint, len(out), total_in, total_out, most_in, supplied))


def parse_upload(fields: dict[str, Any], files: tuple[FilePart, ...], adapter: Adapter,
                 default_cap: int,
                 worst_input: Callable[[CanonicalRequest, int], int]) -> CanonicalRequest:
    """``POST /v1/files``: only Batch API input files pass through the gateway."""
    purpose = fields.get("purpose")
    if purpose != "batch":
        raise bad_request(f"tokenstile relays files for the Batch API only (purpose 'batch'), "
                          f"not {purpose!r}", param="purpose", code="unsupported_purpose")
    part = next((p for p in files if p.name == "file"), None)
    if part is None:
        raise bad_request("'file' is required: the batch's input, one request a line",
                          param="file", code="missing_required_parameter")
    upload = read_batch_file(part, adapter, default_cap, worst_input)
    return CanonicalRequest(api="files", wire="openai", model=upload.model, body=fields,
                            output_cap=0, files=(upload.part,),
                            media=MediaAsk("file", batch=upload.lines))


def parse_create(body: dict[str, Any], model: str, upstream: str,
                 lines: BatchLines) -> CanonicalRequest:
    """``POST /v1/batches`` over an input file uploaded through the gateway (``lines``)."""
    if body.get("endpoint") != lines.endpoint:
        raise bad_request(f"'endpoint' must be {lines.endpoint!r}, the endpoint the input "
                          "file's lines call", param="endpoint")
    window = body.get("completion_window", "24h")
    if not isinstance(window, str):
        raise bad_request("'completion_window' must be a string", param="completion_window")
    return CanonicalRequest(api="batches", wire="openai", model=model, body=body,
                            output_cap=lines.output_tokens, input_tokens=lines.input_tokens,
                            media=MediaAsk("batch", batch=lines, upstream=upstream))
