"""The fake upstream's Gemini API: ``POST /v1beta/models/{model}:generateContent``,
``:streamGenerateContent?alt=sse``, ``:countTokens``, ``:embedContent`` and
``:batchEmbedContents`` (also under ``/v1/``), as the ``google-genai`` SDK parses them.

The key is ``x-goog-api-key`` (or ``?key=``); with ``FakeSettings.require_key`` set, any
other key is answered as Google answers a bad key: 400 ``INVALID_ARGUMENT`` naming
``API_KEY_INVALID``. Errors are Google's ``{"error": {"code", "message", "status"}}``.

Answers follow the usual fake rules (a 16-word vocabulary, exact usage, directives in the
last user content). Usage is Google's ``usageMetadata``: ``promptTokenCount`` (cached
content included; ``cached_tokens`` directive → ``cachedContentTokenCount``),
``candidatesTokenCount``, ``thoughtsTokenCount`` (the ``reasoning_tokens`` directive;
``reasoning_text`` streams them as ``thought`` parts), ``toolUsePromptTokenCount``
(``TOOL_PROMPT_TOKENS`` when the request has a ``googleSearch`` tool, which also grounds
the answer), audio by modality. A stream sends one chunk per token, each carrying the
prompt's count only, and a last chunk with the ``finishReason`` and the whole usage; the
``cut_after``, ``error_after`` and ``no_usage`` directives act on it as on the other APIs.

Embeddings are deterministic unit vectors of ``outputDimensionality`` values (else
``FakeSettings.embedding_dim``), one per request of a batch, each of which must name the
URL's model (``models/{model}``), as Google requires. Their usage is ``usageMetadata``'s
``promptTokenCount``: the o200k count of their text parts and titles (the ``input_tokens``
directive overrides it; ``no_usage`` leaves it out).

``generationConfig`` is read by either spelling of its fields (``maxOutputTokens`` or
``max_output_tokens``), and a ``thinkingBudget`` is refused as Google refuses it: outside
the model's range (``THINKING_RANGES``; -1 is dynamic), or 0 for a model that always thinks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from ._fake_core import count_text, embedding_vector
from ._fake_http import FakeHost, _Req
from ._fake_wire import StreamParts, Turn

Json = dict[str, Any]

METHODS = {"generateContent": False, "streamGenerateContent": True, "countTokens": False,
           "embedContent": False, "batchEmbedContents": False}
TOOL_PROMPT_TOKENS = 20
_TOKENS_PER_CONTENT = 3
_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
             503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP"}
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
# Google's thinking budget ranges per model family (least, most, whether 0 turns it off),
# longest prefix first.
THINKING_RANGES: tuple[tuple[str, int, int, bool], ...] = (
    ("gemini-2.5-pro", 128, 32_768, False), ("gemini-2.5-flash-lite", 512, 24_576, True),
    ("gemini-2.5-flash", 1, 24_576, True),
)


def field(node: Any, name: str, proto: str) -> Any:
    """A request field by its JSON name or its proto name, as Google reads it."""
    if not isinstance(node, dict):
        return None
    return node.get(name) if node.get(name) is not None else node.get(proto)


def thinking_refusal(model: str, config: Any) -> str | None:
    """Google's message for a thinking budget the model does not take."""
    thinking = field(config, "thinkingConfig", "thinking_config")
    budget = field(thinking, "thinkingBudget", "thinking_budget")
    if not isinstance(budget, int) or budget == -1:
        return None
    for prefix, least, most, can_stop in THINKING_RANGES:
        if model.startswith(prefix):
            if budget == 0:
                return None if can_stop else \
                    "Budget 0 is invalid. This model only works in thinking mode."
            if not least <= budget <= most:
                return f"The thinking budget {budget} is invalid. Please choose a value " \
                    f"between {least} and {most}."
    return None



def google_error(status: int, message: str, reason: str | None = None) -> Json:
    error: Json = {"code": status, "message": message,
                   "status": _STATUSES.get(status, "INTERNAL" if status >= 500
                                           else "INVALID_ARGUMENT")}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": reason, "domain": "googleapis.com"}]
    return {"error": error}



def _chunk(obj: Json) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


def _texts(parts: Any) -> list[str]:
    out: list[str] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            out.append(part["text"])
        for key in ("functionCall", "functionResponse"):
            if isinstance(part.get(key), dict):
                out.append(orjson.dumps(part[key]).decode())
    return out


def count_input(body: Json) -> int:
    """The fake's own count of a request's input: o200k text of every content, the system
    instruction and the tools, plus 3 tokens a content."""
    total = 0
    groups = [*(body.get("contents") or ()), body.get("systemInstruction")]
    for content in groups:
        if isinstance(content, dict):
            total += _TOKENS_PER_CONTENT + sum(count_text(t) for t in
                                               _texts(content.get("parts")))
    for tool in body.get("tools") or ():
        total += count_text(orjson.dumps(tool).decode())
    return total


def last_user_text(contents: Any) -> str:
    items: list[Any] = contents if isinstance(contents, list) else []
    for content in reversed(items):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            return " ".join(t for t in _texts(content.get("parts")))
    return ""


def declared_tools(body: Json) -> list[Json] | None:
    """Function declarations in the shape the reply planner reads."""
    out = []
    for tool in body.get("tools") or ():
        declarations = (tool.get("functionDeclarations") or tool.get("function_declarations")
                        or ()) if isinstance(tool, dict) else ()
        for declaration in declarations:
            schema = declaration.get("parametersJsonSchema") or \
                declaration.get("parameters_json_schema") or declaration.get("parameters")
            out.append({"name": declaration.get("name"), "input_schema": schema})
    return out or None


def searches(body: Json) -> bool:
    return any(isinstance(tool, dict) and ("googleSearch" in tool or "google_search" in tool)
               for tool in body.get("tools") or ())


def usage_metadata(t: Turn, output_tokens: int, reasoning: int, tool_prompt: int) -> Json:
    prompt = t.input_tokens - tool_prompt
    candidates = output_tokens - reasoning
    meta: Json = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                  "totalTokenCount": prompt + tool_prompt + output_tokens,
                  "promptTokensDetails": [{"modality": "TEXT",
                                           "tokenCount": prompt - t.input_audio_tokens}]}
    if t.input_audio_tokens:
        meta["promptTokensDetails"].append({"modality": "AUDIO",
                                            "tokenCount": t.input_audio_tokens})
    if t.cached_tokens:
        meta["cachedContentTokenCount"] = t.cached_tokens
        meta["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": t.cached_tokens}]
    if reasoning:
        meta["thoughtsTokenCount"] = reasoning
    if tool_prompt:
        meta["toolUsePromptTokenCount"] = tool_prompt
    return meta


def _grounding() -> Json:
    return {"webSearchQueries": ["fake search"], "groundingChunks": [
        {"web": {"uri": "https://example.com/fake", "title": "Fake"}}]}


def _answer_parts(t: Turn) -> list[Json]:
    reply = t.reply
    if reply.finish == "tool":
        return [{"functionCall": {"name": reply.tool_name, "args": reply.tool_input}}]
    return [{"text": reply.text}]


def _finished(t: Turn, parts: list[Json], tool_prompt: int) -> Json:
    """A body whose one candidate finished with ``parts``, with the final usage."""
    reply = t.reply
    candidate: Json = {"content": {"role": "model", "parts": parts},
                       "finishReason": _FINISH[reply.finish], "index": 0}
    if t.web_searches:
        candidate["groundingMetadata"] = _grounding()
    body: Json = {"candidates": [candidate], "modelVersion": t.model, "responseId": t.id}
    if not t.no_usage:
        body["usageMetadata"] = usage_metadata(t, t.output_tokens, reply.reasoning_tokens,
                                               tool_prompt)
    return body


def generate_body(t: Turn, tool_prompt: int) -> Json:
    reply = t.reply
    parts = [{"text": "".join(reply.reasoning_pieces), "thought": True}] \
        if reply.reasoning_pieces else []
    return _finished(t, [*parts, *_answer_parts(t)], tool_prompt)


def generate_stream(t: Turn, tool_prompt: int) -> StreamParts:
    reply = t.reply
    running = {"promptTokenCount": t.input_tokens - tool_prompt,
               "totalTokenCount": t.input_tokens - tool_prompt}

    def chunk(parts: list[Json], extra: Json | None = None) -> bytes:
        candidate: Json = {"content": {"role": "model", "parts": parts}, "index": 0}
        body: Json = {"candidates": [candidate], "modelVersion": t.model,
                      "responseId": t.id}
        if extra:
            candidate.update(extra)
        if not t.no_usage:
            body["usageMetadata"] = running
        return _chunk(body)

    pieces = [chunk([{"text": p, "thought": True}]) for p in reply.reasoning_pieces]
    if reply.finish == "tool":
        pieces.append(chunk(_answer_parts(t)))
    else:
        pieces += [chunk([{"text": p}]) for p in reply.pieces]
    final = _finished(t, [{"text": ""}], tool_prompt)

    def error(_: int) -> bytes:
        return _chunk(google_error(500, "Fake upstream stream error"))

    return StreamParts(b"", pieces, _chunk(final), error)


class GeminiRoutes:
    """``POST /v1beta/models/{model}:{method}`` of a ``FakeHost``."""

    def __init__(self, fake: FakeHost) -> None:
        self.fake = fake

    async def key_invalid(self, r: _Req) -> None:
        """Google's answer to an unknown API key."""
        self.fake._record(r, 400, "error")
        await self.fake._send_json(r, 400, google_error(
            400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"))

    async def handle(self, r: _Req) -> None:
        model, _, method = r.route.partition("/models/")[2].rpartition(":")
        stream = METHODS.get(method)
        r.model = model
        if stream is None or not model:
            await self.fake._error(r, 404, f"Method {method!r} not found for {r.route}.")
            return
        if r.method != "POST":
            await self.fake._error(r, 405, f"{r.method} is not allowed on {r.route}")
            return
        if stream and parse_qs(r.query.decode("latin-1")).get("alt") != ["sse"]:
            await self.fake._error(r, 400, "This fake streams with alt=sse only.")
            return
        r.stream = stream
        body = r.body
        assert isinstance(body, dict)
        extra = [k for k in ("model", "stream") if k in body]
        if extra:
            await self.fake._error(r, 400, f'Invalid JSON payload received. Unknown name '
                                   f'"{extra[0]}": Cannot find field.')
            return
        if method == "countTokens":
            await self._count(r, body)
            return
        if method in ("embedContent", "batchEmbedContents"):
            await self._embed(r, body, method == "batchEmbedContents")
            return
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            await self.fake._error(r, 400, "* GenerateContentRequest.contents: contents is "
                                   "not specified")
            return
        config = field(body, "generationConfig", "generation_config")
        refusal = thinking_refusal(model, config)
        if refusal is not None:
            await self.fake._error(r, 400, refusal)
            return
        d = await self.fake._prelude(r, last_user_text(contents))
        if d is None:
            return
        tools = declared_tools(body)
        cap = field(config, "maxOutputTokens", "max_output_tokens")
        turn = self.fake._turn(r, d, object_id="resp_", item_prefix="", call_prefix="",
                               counted_input=count_input(body),
                               max_tokens=cap if isinstance(cap, int) else None, tools=tools)
        tool_prompt = 0
        if searches(body):
            tool_prompt = TOOL_PROMPT_TOKENS
            turn.input_tokens += tool_prompt
            turn.web_searches = 1
        turn.service_tier = d.service_tier or "standard"
        await self.fake._answer(r, d, turn, lambda t: generate_body(t, tool_prompt),
                                lambda t: generate_stream(t, tool_prompt), _SSE_HEADERS)

    async def _count(self, r: _Req, body: Json) -> None:
        inner = body.get("generateContentRequest")
        request = inner if isinstance(inner, dict) else body
        d = await self.fake._prelude(r, last_user_text(request.get("contents")))
        if d is None:
            return
        total = d.input_tokens if d.input_tokens is not None else count_input(request)
        self.fake._record(r, 200, "completed")
        await self.fake._send_json(r, 200, {
            "totalTokens": total,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]})

    async def _embed(self, r: _Req, body: Json, batch: bool) -> None:
        requests = body.get("requests") if batch else [body]
        if not isinstance(requests, list) or not requests:
            await self.fake._error(r, 400, "* BatchEmbedContentsRequest.requests: requests "
                                   "is not specified")
            return
        for i, request in enumerate(requests):
            named = request.get("model") if isinstance(request, dict) else None
            if batch and named != f"models/{r.model}":
                await self.fake._error(r, 400, f"* BatchEmbedContentsRequest.requests[{i}]"
                                       f".model: the model {named!r} is not the batch's "
                                       f"models/{r.model}")
                return
            content = request.get("content") if isinstance(request, dict) else None
            if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
                await self.fake._error(r, 400, "* EmbedContentRequest.content: content is "
                                       "not specified")
                return
        texts = [_texts(request["content"]["parts"]) + (
            [request["title"]] if isinstance(request.get("title"), str) else [])
            for request in requests]
        d = await self.fake._prelude(r, " ".join(texts[-1]))
        if d is None:
            return
        embeddings = []
        for request, parts in zip(requests, texts, strict=True):
            dim = field(request, "outputDimensionality", "output_dimensionality")
            size = dim if isinstance(dim, int) and dim > 0 else self.fake.settings.embedding_dim
            embeddings.append({"values": embedding_vector(" ".join(parts), size)})
        tokens = sum(count_text(t) for parts in texts for t in parts) \
            if d.input_tokens is None else d.input_tokens
        answer: Json = {"embeddings": embeddings} if batch else {"embedding": embeddings[0]}
        if not d.no_usage:
            answer["usageMetadata"] = {"promptTokenCount": tokens, "totalTokenCount": tokens}
        self.fake._record(r, 200, "completed", input_tokens=tokens)
        await self.fake._send_json(r, 200, answer)
