"""The fake upstream's AWS Bedrock runtime API: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream (Claude's Anthropic body; InvokeModel of a Titan text
embedding model too), as boto3's ``bedrock-runtime`` client parses them.

Requests are checked as Bedrock checks them: signed with SigV4 (verified with botocore's
``SigV4Auth`` against the secret of the access key id the signature names, when
``FakeSettings.aws_credentials`` lists any), or carrying a Bedrock API key as a bearer
token (one of ``FakeSettings.bedrock_api_keys``, when it lists any). A bad signature is a
403 ``InvalidSignatureException``, an unknown key a 403 ``UnrecognizedClientException``.

Answers follow the usual fake rules (a 16-word vocabulary, exact usage, directives in the
last user message). Usage is Bedrock's: ``inputTokens`` without the cache reads and writes.
Streams are AWS event streams, their frames written with ``providers.eventstream`` (the
documented format) and read by clients with botocore.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from calendar import timegm
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import orjson

from tokenstile.providers import eventstream

from ._fake_core import (
    Directives,
    count_anthropic_input,
    count_text,
    embedding_vector,
    first_int,
    last_user_text,
)
from ._fake_http import FakeHost, _Req
from ._fake_wire import StreamParts, Turn, anthropic_message, anthropic_stream, anthropic_usage

try:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:  # pragma: no cover - the [bedrock] extra is not installed
    SigV4Auth = AWSRequest = Credentials = None


Json = dict[str, Any]

EVENTSTREAM_HEADERS = [(b"content-type", eventstream.CONTENT_TYPE.encode()),
                       (b"cache-control", b"no-cache")]
ACTIONS = {"converse": ("converse", False), "converse-stream": ("converse", True),
           "invoke": ("invoke", False), "invoke-with-response-stream": ("invoke", True),
           "count-tokens": ("count", False)}
_ERROR_TYPES = {400: "ValidationException", 401: "UnrecognizedClientException",
                403: "AccessDeniedException", 404: "ResourceNotFoundException",
                408: "ModelTimeoutException", 424: "ModelErrorException",
                429: "ThrottlingException", 500: "InternalServerException",
                503: "ServiceUnavailableException"}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}
MAX_SKEW_S = 900


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "InternalServerException" if status >= 500
                            else "ValidationException")


def error_headers(status: int, kind: str | None = None) -> list[tuple[bytes, bytes]]:
    """Bedrock names the error in ``x-amzn-errortype`` (with a namespace after a colon)."""
    value = f"{kind or error_type(status)}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    return [(b"x-amzn-errortype", value.encode())]


# --- SigV4 --------------------------------------------------------------------------------


def _auth_fields(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in value.removeprefix("AWS4-HMAC-SHA256").split(","):
        name, _, item = part.strip().partition("=")
        fields[name] = item
    return fields


def verify_sigv4(method: str, raw_path: str, query: str, headers: Mapping[str, str],
                 body: bytes, secrets: Mapping[str, str], now: float
                 ) -> tuple[str | None, tuple[str, str] | None]:
    """Check a request's SigV4 signature with botocore: (the access key id, None) when it
    is valid, else (the key id if any, (error type, message))."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return None, ("MissingAuthenticationTokenException", "Missing Authentication Token")
    fields = _auth_fields(auth)
    scope = fields.get("Credential", "").split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return None, ("IncompleteSignatureException", "Malformed credential scope")
    key_id, _, region, service, _ = scope
    secret = secrets.get(key_id)
    if secret is None:
        return key_id, ("UnrecognizedClientException",
                        "The security token included in the request is invalid.")
    stamp = headers.get("x-amz-date", "")
    try:
        signed_at = timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return key_id, ("IncompleteSignatureException", "X-Amz-Date is missing or invalid")
    if abs(now - signed_at) > MAX_SKEW_S:
        return key_id, ("InvalidSignatureException", "Signature expired")
    names = [n for n in fields.get("SignedHeaders", "").split(";") if n]
    if "host" not in names or any(n not in headers for n in names):
        return key_id, ("IncompleteSignatureException", "A signed header is missing")
    url = f"http://{headers['host']}{raw_path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body,
                         headers={n: headers[n] for n in names})
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(key_id, secret, headers.get("x-amz-security-token")),
                       service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)),
                                request)
    if not hmac.compare_digest(expected, fields.get("Signature", "")):
        return key_id, ("InvalidSignatureException",
                        "The request signature we calculated does not match the signature "
                        "you provided.")
    return key_id, None


# --- Converse -----------------------------------------------------------------------------


def _converse_usage(t: Turn, output_tokens: int) -> Json:
    fresh = t.input_tokens - t.cached_tokens - t.cache_write_tokens
    usage: Json = {"inputTokens": fresh, "outputTokens": output_tokens,
                   "totalTokens": t.input_tokens + output_tokens,
                   "cacheReadInputTokens": t.cached_tokens,
                   "cacheWriteInputTokens": t.cache_write_tokens}
    if t.cache_write_1h_tokens:
        usage["cacheDetails"] = [
            {"ttl": "1h", "inputTokens": t.cache_write_1h_tokens},
            {"ttl": "5m", "inputTokens": t.cache_write_tokens - t.cache_write_1h_tokens}]
    return usage


def _reasoning_blocks(t: Turn) -> list[Json]:
    if not t.reply.reasoning_pieces:
        return []
    return [{"reasoningContent": {"reasoningText": {"text": "".join(t.reply.reasoning_pieces),
                                                    "signature": "sig_fake"}}}]


def _answer_block(t: Turn) -> Json:
    reply = t.reply
    if reply.finish == "tool":
        return {"toolUse": {"toolUseId": t.call_id, "name": reply.tool_name,
                            "input": reply.tool_input}}
    return {"text": reply.text}


def converse_body(t: Turn, tier: str | None) -> Json:
    body: Json = {
        "output": {"message": {"role": "assistant",
                               "content": [*_reasoning_blocks(t), _answer_block(t)]}},
        "stopReason": _STOP_REASONS[t.reply.finish],
        "usage": _converse_usage(t, t.output_tokens),
        "metrics": {"latencyMs": 1},
    }
    if tier:
        body["serviceTier"] = {"type": tier}
    return body


def converse_stream(t: Turn, tier: str | None) -> StreamParts:
    reply = t.reply
    event = eventstream.event
    reasoning = bool(reply.reasoning_pieces)
    at = 1 if reasoning else 0
    head = event("messageStart", {"role": "assistant"})
    opening = b""
    if reply.finish == "tool":
        opening = event("contentBlockStart", {"contentBlockIndex": at, "start": {
            "toolUse": {"toolUseId": t.call_id, "name": reply.tool_name}}})
        delta_of = "toolUse"
    else:
        delta_of = "text"
    pieces = [event("contentBlockDelta", {"contentBlockIndex": at, "delta": (
        {"toolUse": {"input": p}} if delta_of == "toolUse" else {"text": p})})
        for p in reply.pieces]
    if reasoning:
        shut = event("contentBlockStop", {"contentBlockIndex": 0}) + opening
        if pieces:
            pieces[0] = shut + pieces[0]
        pieces[:0] = [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {
            "reasoningContent": {"text": p}}}) for p in reply.reasoning_pieces]
    else:
        head += opening
    metadata: Json = {"usage": _converse_usage(t, t.output_tokens), "metrics": {"latencyMs": 1}}
    if tier:
        metadata["serviceTier"] = {"type": tier}
    tail = ((shut if reasoning and not reply.pieces else b"")
            + event("contentBlockStop", {"contentBlockIndex": at})
            + event("messageStop", {"stopReason": _STOP_REASONS[reply.finish]}))
    if not t.no_usage:
        tail += event("metadata", metadata)

    def error(_: int) -> bytes:
        return eventstream.exception("modelStreamErrorException",
                                     "Fake upstream stream error")

    return StreamParts(head, pieces, tail, error)


def _converse_tools(body: Json) -> list[Json] | None:
    """Converse tool specs in the shape the reply planner reads."""
    config = body.get("toolConfig")
    tools = config.get("tools") if isinstance(config, dict) else None
    out = []
    for tool in tools if isinstance(tools, list) else ():
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if isinstance(spec, dict):
            schema = spec.get("inputSchema")
            out.append({"name": spec.get("name"), "input_schema": schema.get("json")
                        if isinstance(schema, dict) else None})
    return out or None


# --- InvokeModel (Claude) -----------------------------------------------------------------


def _chunk(event: Json) -> bytes:
    data = binascii.b2a_base64(orjson.dumps(event), newline=False).decode()
    return eventstream.event("chunk", {"bytes": data})


def _as_chunks(sse: bytes, t: Turn) -> bytes:
    """Anthropic SSE events as invoke ``chunk`` frames; ``message_stop`` carries Bedrock's
    ``amazon-bedrock-invocationMetrics``."""
    out = bytearray()
    for event in sse.split(b"\n\n"):
        _, _, data = event.partition(b"data: ")
        if not data:
            continue
        payload = orjson.loads(data)
        if payload.get("type") == "message_stop":
            payload["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": t.input_tokens - t.cached_tokens - t.cache_write_tokens,
                "outputTokenCount": t.output_tokens, "invocationLatency": 1,
                "firstByteLatency": 1}
        out += _chunk(payload)
    return bytes(out)


def invoke_stream(t: Turn) -> StreamParts:
    parts = anthropic_stream(t)

    def error(_: int) -> bytes:
        return eventstream.exception("modelStreamErrorException",
                                     "Fake upstream stream error")

    return StreamParts(_as_chunks(parts.head, t), [_as_chunks(p, t) for p in parts.pieces],
                       _as_chunks(parts.tail, t), error)


# --- the routes ---------------------------------------------------------------------------


class BedrockRoutes:
    """``POST /model/{modelId}/{action}`` of a ``FakeHost``."""

    def __init__(self, fake: FakeHost) -> None:
        self.fake = fake

    async def handle(self, r: _Req) -> None:
        prefix, _, action = r.route.rpartition("/")
        model = unquote(r.raw_path[len("/model/"):].rpartition("/")[0])
        api, stream = ACTIONS.get(action, ("", False))
        r.model, r.stream = model, stream
        if not api or not prefix.startswith("/model/") or not model:
            await self.fake._error(r, 404, f"Unknown operation {r.method} {r.route}")
            return
        if r.method != "POST":
            await self.fake._error(r, 405, f"{r.method} is not allowed on {r.route}")
            return
        if not await self._bedrock_auth(r):
            return
        body = r.body
        assert isinstance(body, dict)
        if api == "invoke":
            await self._invoke(r, body)
        elif api == "count":
            await self._count(r, body)
        else:
            await self._converse(r, body)

    async def _bedrock_auth(self, r: _Req) -> bool:
        settings = self.fake.settings
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in r.raw_headers}
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            r.api_key = auth[7:]
            if not settings.bedrock_api_keys or r.api_key in settings.bedrock_api_keys:
                return True
            failure: tuple[str, str] | None = ("UnrecognizedClientException",
                                               "The API key is not valid.")
        elif not settings.aws_credentials:
            return True
        else:
            key_id, failure = verify_sigv4(r.method, r.raw_path, r.query.decode("latin-1"),
                                           headers, r.raw, settings.aws_credentials,
                                           time.time())
            r.api_key = key_id
            if failure is None:
                return True
        assert failure is not None
        await self.fake._error(r, 403, failure[1], kind=failure[0])
        return False

    async def _count(self, r: _Req, body: Json) -> None:
        """CountTokens: ``{"input": {"converse": {...}}}`` or ``{"input": {"invokeModel":
        {"body": base64 of an InvokeModel body}}}`` -> ``{"inputTokens": n}``."""
        given = body.get("input")
        given = given if isinstance(given, dict) else {}
        forms = [k for k in ("converse", "invokeModel") if k in given]
        if len(forms) != 1:
            await self.fake._error(r, 400, "input: exactly one of converse and invokeModel "
                                   "must be set")
            return
        inner = given[forms[0]]
        if forms[0] == "invokeModel":
            try:
                inner = orjson.loads(base64.b64decode(inner["body"], validate=True))
            except (KeyError, TypeError, ValueError):
                await self.fake._error(r, 400, "input.invokeModel.body: not base64 JSON")
                return
        begun = await self._begin(r, inner if isinstance(inner, dict) else {})
        if begun is None:
            return
        messages, d = begun
        tools = _converse_tools(inner) if forms[0] == "converse" else inner.get("tools")
        counted = count_anthropic_input(inner.get("system"), messages, tools)
        if d.input_tokens is not None:
            counted = d.input_tokens
        self.fake._record(r, 200, "completed")
        await self.fake._send_json(r, 200, {"inputTokens": counted})

    async def _titan_embedding(self, r: _Req, body: Json) -> None:
        """Titan Text Embeddings: ``inputText`` in, ``embedding`` (``dimensions`` values,
        else ``FakeSettings.embedding_dim``) and ``inputTextTokenCount`` out (the o200k
        count; the ``input_tokens`` directive overrides it, ``no_usage`` leaves it out)."""
        text = body.get("inputText")
        if r.stream:
            await self.fake._error(r, 400, "The model is unsupported for streaming.")
            return
        if not isinstance(text, str) or not text:
            await self.fake._error(r, 400, "Malformed input request: #: required key "
                                   "[inputText] not found")
            return
        d = await self.fake._prelude(r, text)
        if d is None:
            return
        dimensions = body.get("dimensions")
        size = dimensions if isinstance(dimensions, int) else self.fake.settings.embedding_dim
        vector = embedding_vector(text, size)
        tokens = count_text(text) if d.input_tokens is None else d.input_tokens
        answer: Json = {"embedding": vector, "embeddingsByType": {"float": vector}}
        if not d.no_usage:
            answer["inputTextTokenCount"] = tokens
        self.fake._record(r, 200, "completed", input_tokens=tokens)
        await self.fake._send_json(r, 200, answer, [
            (b"x-amzn-bedrock-input-token-count", str(tokens).encode())])

    async def _begin(self, r: _Req, body: Json) -> tuple[list[Any], Directives] | None:
        """A Converse-shaped request's messages and the fake's directives for it, or None
        once an error has been answered."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            await self.fake._error(r, 400, "messages: Member must not be null")
            return None
        d = await self.fake._prelude(r, last_user_text(messages))
        return None if d is None else (messages, d)

    async def _converse(self, r: _Req, body: Json) -> None:
        begun = await self._begin(r, body)
        if begun is None:
            return
        messages, d = begun
        tools = _converse_tools(body)
        config = body.get("inferenceConfig")
        turn = self.fake._turn(
            r, d, object_id="", item_prefix="", call_prefix="tooluse_",
            counted_input=count_anthropic_input(body.get("system"), messages, tools),
            max_tokens=first_int(config, ("maxTokens",)) if isinstance(config, dict) else None,
            tools=tools)
        tier = d.service_tier
        turn.service_tier = tier or "default"
        await self.fake._answer(r, d, turn, lambda t: converse_body(t, tier),
                                lambda t: converse_stream(t, tier), EVENTSTREAM_HEADERS)

    async def _invoke(self, r: _Req, body: Json) -> None:
        if "amazon.titan-embed-text" in r.model:
            await self._titan_embedding(r, body)
            return
        if body.get("anthropic_version") != "bedrock-2023-05-31":
            await self.fake._error(r, 400, "anthropic_version: must be bedrock-2023-05-31")
            return
        extra = [k for k in ("model", "stream") if k in body]
        if extra:
            await self.fake._error(r, 400, f"extraneous key [{extra[0]}] is not permitted")
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or body.get("max_tokens") is None:
            await self.fake._error(r, 400, "messages and max_tokens are required")
            return
        d = await self.fake._prelude(r, last_user_text(messages))
        if d is None:
            return
        tools = body.get("tools")
        turn = self.fake._turn(
            r, d, object_id="msg_bdrk_", item_prefix="", call_prefix="toolu_bdrk_",
            counted_input=count_anthropic_input(body.get("system"), messages, tools),
            max_tokens=first_int(body, ("max_tokens",)), tools=tools)
        turn.service_tier = d.service_tier or "standard"
        usage = anthropic_usage(turn, turn.output_tokens)
        counts = [(b"x-amzn-bedrock-input-token-count", str(usage["input_tokens"]).encode()),
                  (b"x-amzn-bedrock-output-token-count", str(turn.output_tokens).encode())]
        await self.fake._answer(r, d, turn, anthropic_message, invoke_stream,
                                EVENTSTREAM_HEADERS, counts)
