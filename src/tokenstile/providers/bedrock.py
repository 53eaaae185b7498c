"""AWS Bedrock's wire format, as clients send it to the gateway (``/model/{modelId}/…``).

Two APIs share it:

- ``converse`` (``/converse``, ``/converse-stream``): Bedrock's own request shape for every
  model (``providers.converse``);
- ``messages`` (``/invoke``, ``/invoke-with-response-stream``): Claude's Anthropic
  Messages body, with ``anthropic_version: bedrock-2023-05-31`` and without ``model``;
- ``embeddings`` (``/invoke`` on a Titan text embedding model, known by its id):
  ``inputText`` (``providers.titan``).

Other model families' invoke bodies are refused: Converse serves them.

``/count-tokens`` (CountTokens, free) takes either request under ``input``: ``{"converse":
{...}}`` or ``{"invokeModel": {"body": base64 of an invoke body}}``.

The model id and whether the call streams are in the URL; the gateway puts them into the
body it understands (``model``, ``stream``) and takes them out again before forwarding.

Streams are AWS event streams (``providers.eventstream``). The observers relay every frame
unchanged and decode only the frames they need: the final usage at the end of the stream
(Converse's ``metadata`` event; ``message_start`` and ``message_delta`` inside invoke
``chunk`` events), everything else only when a stream ended before its usage and its text
must be counted. botocore's frame decoder is exact but slow (pure Python headers), so a
stream relays at the cost of a few decoded frames, not one per token.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson

from tokenstile.errors import bad_request
from tokenstile.hidden_input import hidden_sources
from tokenstile.providers import eventstream
from tokenstile.providers.answers import AnswerText
from tokenstile.providers.anthropic import (
    AnthropicAdapter,
    UsageTracker,
    stream_usage,
    usage_from_anthropic,
    watch_event,
)
from tokenstile.providers.base import forwarded_body
from tokenstile.providers.converse import (
    CAP_FIELD,
    ConverseStreamState,
    as_messages,
    count_converse,
    parse_converse,
    usage_of_answer,
)
from tokenstile.providers.lazy_stream import LazyStreamObserver
from tokenstile.providers.titan import count_titan, parse_titan, usage_of_titan
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
# Frames decoded from the end of a stream while looking for its final usage.
_TAIL_FRAMES = 4

_ANTHROPIC = AnthropicAdapter()


def converse_hidden(body: dict[str, Any]) -> tuple[str, ...]:
    """Input of a Converse request the gateway cannot count (files in S3, binary
    documents, video)."""
    messages, system, _ = as_messages(body)
    return hidden_sources("messages", {"messages": messages, "system": system})


class BedrockAdapter:
    """``/model/{modelId}/converse[-stream]`` and ``/invoke[-with-response-stream]``
    (Claude's Messages, or a Titan embedding)."""

    wire: WireFormat = "bedrock"

    def parse(self, api: ApiKind, body: dict[str, Any]) -> CanonicalRequest:
        if api == "count_tokens":
            model = body.get("model")
            assert isinstance(model, str)  # from the URL
            counted = self._counted(body)
            return CanonicalRequest(api="count_tokens", wire="bedrock", model=model, body=body,
                                    input_text=counted.input_text,
                                    system_text=counted.system_text)
        if api == "embeddings":
            model = body.get("model")
            assert isinstance(model, str)  # from the URL
            return CanonicalRequest(api="embeddings", wire="bedrock", model=model, body=body,
                                    output_cap=0, input_text=parse_titan(body))
        if api == "messages":
            version = body.get("anthropic_version")
            if not isinstance(version, str) or not version:
                raise bad_request(
                    "this gateway serves InvokeModel for Anthropic Messages bodies only: "
                    f"set 'anthropic_version' to {BEDROCK_ANTHROPIC_VERSION!r} (Claude), or "
                    "call other models through Converse", param="anthropic_version",
                    code="unsupported_body")
            req = _ANTHROPIC.parse("messages", body)
            req.wire = "bedrock"
            return req
        model = body.get("model")
        assert isinstance(model, str)  # from the URL
        input_text, system_text, cap = parse_converse(body)
        return CanonicalRequest(
            api="converse", wire="bedrock", model=model, body=body,
            stream=body.get("stream") is True, output_cap=cap, output_cap_field=CAP_FIELD,
            input_text=input_text, system_text=system_text,
            hidden_input=converse_hidden(body))

    def _counted(self, body: dict[str, Any]) -> CanonicalRequest:
        """The request a CountTokens body counts, parsed (its shape checked)."""
        given = body.get("input")
        given = given if isinstance(given, dict) else {}
        forms = [k for k in ("converse", "invokeModel") if k in given]
        if len(forms) != 1 or not isinstance(given[forms[0]], dict):
            raise bad_request("'input' must hold one of 'converse' (a Converse request) and "
                              "'invokeModel' (an InvokeModel body, base64)", param="input")
        inner: dict[str, Any] = {**given[forms[0]], "model": body["model"]}
        if forms[0] == "converse":
            return self.parse("converse", inner)
        try:
            decoded = orjson.loads(binascii.a2b_base64(inner.get("body") or b"", strict_mode=True))
        except (TypeError, ValueError, binascii.Error):
            decoded = None
        if not isinstance(decoded, dict):
            raise bad_request("'input.invokeModel.body' must be an InvokeModel body (JSON), "
                              "base64-encoded", param="input.invokeModel.body")
        return self.parse("messages", {**decoded, "model": body["model"]})

    def count_input(self, req: CanonicalRequest) -> int:
        if req.api == "converse":
            return count_converse(req.model, req.body)
        if req.api == "count_tokens":
            return self.count_input(self._counted(req.body))
        if req.api == "embeddings":
            return count_titan(req.model, req.body)
        return _ANTHROPIC.count_input(req)

    def upstream_body(self, req: CanonicalRequest) -> dict[str, Any]:
        return forwarded_body(req.body)

    def usage_from_body(self, api: ApiKind, payload: Any) -> Usage | None:
        if api == "count_tokens":
            return Usage()  # counting is free
        if api == "converse":
            return usage_of_answer(payload)
        if api == "embeddings":
            return usage_of_titan(payload)
        return usage_from_anthropic(payload.get("usage")) if isinstance(payload, dict) \
            else None

    def observer(self, req: CanonicalRequest) -> FrameObserver:
        if req.api == "converse":
            return ConverseStreamObserver(req.model)
        return InvokeStreamObserver(req.model)


# --- streams ------------------------------------------------------------------------------


def invoke_event(frame: eventstream.Frame) -> dict[str, Any] | None:
    """The Anthropic stream event inside an invoke ``chunk`` frame (base64 JSON bytes)."""
    if frame.message_type != "event" or frame.name != "chunk":
        return None
    payload = frame.json()
    data = payload.get("bytes") if isinstance(payload, dict) else None
    if not isinstance(data, str):
        return None
    try:
        inner = orjson.loads(binascii.a2b_base64(data))
    except (binascii.Error, ValueError):
        return None
    return inner if isinstance(inner, dict) else None


def chunk_frame(event: dict[str, Any]) -> bytes:
    """An Anthropic stream event as an invoke ``chunk`` frame."""
    data = binascii.b2a_base64(orjson.dumps(event), newline=False).decode()
    return eventstream.event("chunk", {"bytes": data})


class FrameObserver(LazyStreamObserver):
    """A ``StreamObserver`` of Bedrock event frames that relays them unchanged and decodes
    lazily: in order, while the gateway waits for the first visible output, then only the
    frames that carry the final usage; every frame only when the stream ended without it."""

    __slots__ = ()

    def _apply(self, event: bytes) -> None:
        self._apply_frame(eventstream.decode(event))

    def _apply_frame(self, frame: eventstream.Frame) -> None:
        raise NotImplementedError

    def _decode(self, index: int) -> eventstream.Frame:
        return eventstream.decode(self._events[index])


class ConverseStreamObserver(FrameObserver):
    """ConverseStream: the usage is in the last event, ``metadata``."""

    __slots__ = ("_state",)

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._state = ConverseStreamState()

    def _apply_frame(self, frame: eventstream.Frame) -> None:
        if frame.message_type == "event":
            self._state.apply(frame.name, frame.json())

    def _text(self) -> AnswerText:
        return self._state.text

    def _settle(self) -> None:
        for index in range(len(self._events) - 1, max(self._read, len(self._events)
                                                       - _TAIL_FRAMES) - 1, -1):
            frame = self._decode(index)
            if frame.message_type == "event" and frame.name == "metadata":
                self._state.apply(frame.name, frame.json())
                return

    def _final(self) -> bool:
        return self._state.final_usage is not None

    def _usage(self) -> Usage | None:
        return self._state.final_usage


class InvokeStreamObserver(FrameObserver):
    """InvokeModelWithResponseStream for Claude: Anthropic's events inside ``chunk``
    frames; the input usage is in the first (``message_start``), the final output count in
    ``message_delta`` near the end."""

    __slots__ = ("_head", "_text_parts", "_tracker")

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._tracker = UsageTracker()
        self._text_parts = AnswerText()
        self._head = False  # message_start read

    def _apply_frame(self, frame: eventstream.Frame) -> None:
        event = invoke_event(frame)
        if event is None:
            return
        kind = event.get("type")
        watch_event(kind, event, self._tracker, self._text_parts)
        if kind == "message_start":
            self._head = True

    def _text(self) -> AnswerText:
        return self._text_parts

    def _settle(self) -> None:
        if not self._events:
            return
        if not self._head and self._read == 0:
            self._apply_frame(self._decode(0))
        for index in range(len(self._events) - 1, max(self._read, len(self._events)
                                                       - _TAIL_FRAMES) - 1, -1):
            event = invoke_event(self._decode(index))
            if event is not None and event.get("type") == "message_delta":
                self._tracker.update(event.get("usage"), final=True)
                return

    def _final(self) -> bool:
        return self._tracker.final

    def _usage(self) -> Usage | None:
        if self._tracker.final:
            return self._tracker.usage()
        return stream_usage(self._tracker, self._model, "".join(self._text_parts.visible),
                            "".join(self._text_parts.reasoning))
