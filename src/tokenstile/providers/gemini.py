"""Google's Gemini API, as clients send it to the gateway:
``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
``:countTokens``, ``:embedContent`` and ``:batchEmbedContents`` (also under ``/v1/``). The
requests and answers themselves are ``providers.generate_content`` and
``providers.embed_content``.

The model and whether the call streams are in the URL; the gateway puts them into the body
it understands (``model``, ``stream``) and takes them out again before forwarding.

Streams are SSE chunks (``data: {...}``), relayed unchanged. The observer parses lazily: in
order while the gateway waits for the first visible output, then only the last few chunks,
where the final ``usageMetadata`` is; every chunk only when a stream ended without it.
"""

from __future__ import annotations

from typing import Any

from tokenstile.providers.answers import AnswerText
from tokenstile.providers.base import forwarded_body
from tokenstile.providers.embed_content import (
    EMBED_APIS,
    count_embed,
    hidden_embed,
    parse_embed,
    usage_of_embedding,
    with_model,
)
from tokenstile.providers.generate_content import (
    CAP_FIELD,
    GeminiStreamState,
    count_gemini,
    hidden_gemini,
    output_worst_case,
    parse_gemini,
    usage_of_answer,
)
from tokenstile.providers.lazy_stream import LazyStreamObserver
from tokenstile.providers.sse import event_json
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat

_TAIL_EVENTS = 4


def key_refused(status: int, payload: bytes) -> bool:
    """Google's answer to a bad API key: 400 (or 403) naming ``API_KEY_INVALID``."""
    return status in (400, 401, 403) and b"API_KEY_" in payload


# --- the adapter --------------------------------------------------------------------------


class GeminiAdapter:
    """``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent``,
    ``:countTokens``, ``:embedContent`` and ``:batchEmbedContents``."""

    wire: WireFormat = "gemini"

    def parse(self, api: ApiKind, body: dict[str, Any]) -> CanonicalRequest:
        model = body.get("model")
        assert isinstance(model, str)  # from the URL
        if api in EMBED_APIS:
            return CanonicalRequest(api=api, wire="gemini", model=model, body=body,
                                    output_cap=0, input_text=parse_embed(api, body),
                                    hidden_input=hidden_embed(api, body))
        input_text, system_text = parse_gemini(api, body)
        if api == "count_tokens":
            return CanonicalRequest(api="count_tokens", wire="gemini", model=model, body=body,
                                    input_text=input_text, system_text=system_text)
        return CanonicalRequest(
            api="generate_content", wire="gemini", model=model, body=body,
            stream=body.get("stream") is True, output_cap=output_worst_case(model, body),
            output_cap_field=CAP_FIELD, input_text=input_text, system_text=system_text,
            hidden_input=hidden_gemini(body))

    def count_input(self, req: CanonicalRequest) -> int:
        if req.api in EMBED_APIS:
            return count_embed(req.model, req.api, req.body)
        return count_gemini(req.model, req.body)

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        return forwarded_body(with_model(req.api, req.body))

    def usage_from_body(self, api: ApiKind, payload: Any) -> Usage | None:
        if api == "count_tokens":
            return Usage()  # counting is free
        if api in EMBED_APIS:
            return usage_of_embedding(payload)
        return usage_of_answer(payload)

    def observer(self, req: CanonicalRequest) -> GeminiStreamObserver:
        return GeminiStreamObserver(req.model)


# --- streams -----------------------------------------------------------------------------


class GeminiStreamObserver(LazyStreamObserver):
    """A ``StreamObserver`` of Gemini's SSE chunks that relays them unchanged and parses
    lazily: in order while the gateway waits for the first visible output, then only the
    last few chunks (where the final usage is); every chunk only when the stream ended
    without it."""

    __slots__ = ("_state",)

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._state = GeminiStreamState()

    def _apply(self, event: bytes) -> None:
        self._state.apply(event_json(event))

    def _text(self) -> AnswerText:
        return self._state.text

    def _settle(self) -> None:
        """The final usage from the last chunks, their text left for ``_read_on``."""
        tail = GeminiStreamState()
        start = max(self._read, len(self._events) - _TAIL_EVENTS)
        for event in self._events[start:]:
            tail.apply(event_json(event), text=False)
        if tail.final is not None:
            self._state.final = tail.final
            self._state.grounded = self._state.grounded or tail.grounded

    def _final(self) -> bool:
        return self._state.final is not None

    def _usage(self) -> Usage | None:
        return self._state.usage(self._model)
