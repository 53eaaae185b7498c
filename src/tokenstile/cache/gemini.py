"""Gemini answers in the response cache: a ``streamGenerateContent`` stream rebuilt as the
``generateContent`` answer it amounts to, and a cached answer played back as a stream.

A stream is a run of SSE chunks, each a ``GenerateContentResponse``: a candidate's parts
arrive in order (text in pieces), its other fields (``finishReason``, ``safetyRatings``,
``groundingMetadata``…) and the answer's (``usageMetadata``, ``modelVersion``,
``responseId``) in whichever chunk has them, the last value standing. There is no end
marker: a stream is whole when every candidate has a ``finishReason``; one that carried an
error chunk, or ended without, is not cached.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from tokenstile.providers.sse import event_fields, json_object

Json = dict[str, Any]
_TEXT_ONLY = frozenset({"text", "thought"})


class _Part:
    """One part being rebuilt: its fields, and its text as pieces (joined once)."""

    __slots__ = ("fields", "pieces")

    def __init__(self, fields: Json) -> None:
        self.fields = fields
        text = fields.get("text")
        self.pieces: list[str] = [text] if isinstance(text, str) else []

    def takes(self, part: Json) -> bool:
        """A piece of plain text continues the text part before it (thought or not alike)."""
        return bool(self.pieces) and set(part) <= _TEXT_ONLY and \
            isinstance(part.get("text"), str) and \
            bool(part.get("thought")) == bool(self.fields.get("thought"))

    def whole(self) -> Json:
        return {**self.fields, "text": "".join(self.pieces)} if self.pieces else self.fields


class GeminiAssembler:
    """Gemini's stream chunks to the whole ``generateContent`` answer (the module's notes)."""

    def __init__(self) -> None:
        self.answer: Json = {}
        self.candidates: dict[int, Json] = {}
        self.roles: dict[int, Any] = {}
        self.parts: dict[int, list[_Part]] = {}
        self.failed = False

    def feed(self, event: bytes) -> None:
        if self.failed:
            return
        _, data = event_fields(event)
        if not data:
            return
        payload = json_object(data)
        if payload is None or "error" in payload:
            self.failed = True
            return
        for name, value in payload.items():
            if name != "candidates":
                self.answer[name] = value
        for candidate in payload.get("candidates") or ():
            if not isinstance(candidate, dict):
                self.failed = True
                return
            index = candidate.get("index")
            index = index if isinstance(index, int) else 0
            held = self.candidates.setdefault(index, {})
            for name, value in candidate.items():
                if name == "content" and isinstance(value, dict):
                    self._content(index, value)
                elif name != "content":
                    held[name] = value

    def _content(self, index: int, content: Json) -> None:
        if content.get("role") is not None:
            self.roles[index] = content["role"]
        parts = self.parts.setdefault(index, [])
        for part in content.get("parts") or ():
            if not isinstance(part, dict):
                self.failed = True
                return
            if part.get("text") == "" and set(part) <= _TEXT_ONLY:
                continue  # an empty piece (the last chunk's) adds nothing
            if parts and parts[-1].takes(part):
                parts[-1].pieces.append(part["text"])
            else:
                parts.append(_Part(dict(part)))

    def result(self) -> bytes | None:
        if self.failed or not self.candidates or any(
                not c.get("finishReason") for c in self.candidates.values()):
            return None
        candidates = []
        for index in sorted(self.candidates):
            content = {"role": self.roles.get(index, "model"),
                       "parts": [p.whole() for p in self.parts.get(index, [])]}
            candidates.append({"content": content, **self.candidates[index]})
        return orjson.dumps({"candidates": candidates, **self.answer})


def _chunk(payload: Json) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def gemini_events(body: Json, size: int) -> Iterator[bytes]:
    """A cached answer as the chunks Google streams: each part (text in pieces of ``size``
    characters, the part's other fields on its first piece), then a last chunk with each
    candidate's ``finishReason`` and other fields and the answer's ``usageMetadata``."""
    answer = {k: v for k, v in body.items() if k not in ("candidates", "usageMetadata")}
    candidates = [c for c in body.get("candidates") or () if isinstance(c, dict)]
    for position, candidate in enumerate(candidates):
        index = candidate.get("index", position)
        content = candidate.get("content")
        content = content if isinstance(content, dict) else {}
        role = content.get("role", "model")
        for part in content.get("parts") or ():
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            pieces = _pieces(text, size) if isinstance(text, str) else [None]
            for n, piece in enumerate(pieces):
                if piece is None:
                    sent = part
                elif n == 0:
                    sent = {**part, "text": piece}
                else:
                    sent = {"text": piece, **({"thought": True} if part.get("thought") else {})}
                yield _chunk({"candidates": [{"content": {"role": role, "parts": [sent]},
                                              "index": index}], **answer})
    last = [{**{k: v for k, v in c.items() if k != "content"},
             "content": {"role": "model", "parts": [{"text": ""}]},
             "index": c.get("index", position)} for position, c in enumerate(candidates)]
    final: Json = {"candidates": last, **answer}
    if body.get("usageMetadata") is not None:
        final["usageMetadata"] = body["usageMetadata"]
    yield _chunk(final)
