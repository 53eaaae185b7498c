"""Response policies on a streamed answer.

Wraps the provider's stream observer (which still sees every event untouched, so usage
and the billed output text are what the upstream sent). Text-bearing events are held back
just long enough to know whether their text is part of something to redact or block; they
are then relayed in their original order with their text rewritten. Events that carry the
whole text again at the end (the Responses API's ``*.done`` and ``response.completed``)
get the same redaction. A block raises ``StreamBlocked`` before the offending text leaves.

Tool-call arguments arrive as pieces of JSON that mean something only together, so their
events are held until the call ends (its choice finishes, its block stops, its arguments
are done), the gathered arguments are checked whole (``policies.arguments``), and a
redaction puts the rewritten arguments in the first piece and empties the others: a client
that joins the pieces, as the SDKs do, gets the rewritten arguments.

Gemini's chunks carry whole function calls (``functionCall.args``, an object): they are
checked as they pass, like a whole answer's.

Bedrock streams are event stream frames, not SSE: each is decoded (a Converse event, or
the Anthropic event inside an invoke ``chunk``) and one whose text changed is encoded
again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from tokenstile.policies.arguments import scan_arguments, scan_tool_value
from tokenstile.policies.scanner import ChannelScanner, Finder, Span, scan_whole
from tokenstile.providers import eventstream
from tokenstile.providers.base import ObserverWrapper, StreamObserver
from tokenstile.providers.bedrock import chunk_frame, invoke_event
from tokenstile.providers.sse import data_event, event_fields, json_object, named_event

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed",
                       "error", "message_stop"})


@dataclass(slots=True)
class _Event:
    raw: bytes
    name: str | None = None
    obj: Any = None
    waiting: int = 0
    changed: bool = False
    frame: str | None = None  # a Bedrock frame: "converse" or "invoke"

    def render(self) -> bytes:
        if not self.changed:
            return self.raw
        if self.frame == "converse":
            return eventstream.event(self.name or "", self.obj)
        if self.frame == "invoke":
            return chunk_frame(self.obj)
        return named_event(self.name, self.obj) if self.name else data_event(self.obj)


def _frame_event(api: str, raw: bytes) -> _Event:
    """A Bedrock frame, decoded: its event name and JSON (None for an exception frame)."""
    frame = eventstream.decode(raw)
    if frame.message_type != "event":
        return _Event(raw, frame.name)
    if api == "converse":
        return _Event(raw, frame.name, frame.json(), frame="converse")
    return _Event(raw, frame.name, invoke_event(frame), frame="invoke")


@dataclass(slots=True)
class _Parsed:
    slots: list[tuple[Hashable, Any, Any]] = field(default_factory=list)  # channel, owner, key
    finals: set[Hashable] = field(default_factory=set)
    whole: list[tuple[Any, Any]] = field(default_factory=list)  # full texts to redact
    terminal: bool = False
    # Pieces of tool-call arguments: (call, owner, key), a call being (its channel, which).
    calls: list[tuple[tuple[Hashable, Hashable], Any, Any]] = field(default_factory=list)
    whole_calls: list[tuple[Any, Any]] = field(default_factory=list)  # whole arguments


class PolicyStreamObserver(ObserverWrapper):
    __slots__ = ("_api", "_calls", "_finders", "_frames", "_next", "_on_spans", "_pieces",
                 "_queue", "_scanners")

    def __init__(self, inner: StreamObserver, api: str, finders: list[Finder],
                 on_spans: Callable[[list[Span]], None], wire: str = "openai") -> None:
        super().__init__(inner)
        self._api = api
        self._frames = wire == "bedrock"
        self._finders = finders
        self._on_spans = on_spans
        self._scanners: dict[Hashable, ChannelScanner] = {}
        self._queue: deque[_Event] = deque()
        self._pieces: dict[int, tuple[_Event, Any, Any]] = {}
        self._next = 0
        self._calls: dict[tuple[Hashable, Hashable], list[tuple[_Event, Any, Any]]] = {}


    def on_event(self, event: bytes) -> bytes | None:
        relay = self._inner.on_event(event)
        if relay is None:
            return None
        if self._frames:
            entry = _frame_event(self._api, relay)
            obj = entry.obj
            done = entry.frame is None  # an exception frame ends the stream
        else:
            name, data = event_fields(relay)
            entry = _Event(relay, name)
            obj = json_object(data)
            done = data.strip() == b"[DONE]"
        self._queue.append(entry)
        if not isinstance(obj, dict):
            if done:
                self._advance(set(self._scanners), set(self._scanners))
                self._end_calls(None)
            return self._drain()
        entry.obj = obj
        parsed = _parse(self._api, obj, entry.name)
        touched: set[Hashable] = set(parsed.finals)
        for channel, owner, key in parsed.slots:
            scanner = self._scanners.get(channel)
            if scanner is None:
                scanner = self._scanners[channel] = ChannelScanner(self._finders)
            self._pieces[self._next] = (entry, owner, key)
            scanner.push(self._next, owner[key])
            self._next += 1
            entry.waiting += 1
            touched.add(channel)
        for call, owner, key in parsed.calls:
            self._calls.setdefault(call, []).append((entry, owner, key))
            entry.waiting += 1
        finals = set(self._scanners) if parsed.terminal else parsed.finals
        self._advance(touched | finals, finals)
        self._end_calls(None if parsed.terminal else parsed.finals)
        for owner, key in parsed.whole:
            text, spans = scan_whole(owner[key], self._finders)
            self._on_spans(spans)
            if text != owner[key]:
                owner[key] = text
                entry.changed = True
        for owner, key in parsed.whole_calls:
            value, spans = scan_tool_value(owner[key], self._finders)
            self._on_spans(spans)
            if value is not owner[key]:
                owner[key] = value
                entry.changed = True
        return self._drain()

    def _end_calls(self, channels: set[Hashable] | None) -> None:
        """Check the arguments of the tool calls that ended (in ``channels``; all: None)."""
        for call in [c for c in self._calls if channels is None or c[0] in channels]:
            pieces = self._calls.pop(call)
            raw = "".join(owner[key] for _, owner, key in pieces)
            text, spans = scan_arguments(raw, self._finders)
            self._on_spans(spans)
            for index, (entry, owner, key) in enumerate(pieces):
                if text != raw:
                    owner[key] = "" if index else text
                    entry.changed = True
                entry.waiting -= 1

    def _advance(self, channels: set[Hashable], finals: set[Hashable]) -> None:
        for channel in channels:
            scanner = self._scanners.get(channel)
            if scanner is None:
                continue
            released, spans = scanner.advance(channel in finals)
            if spans:
                self._on_spans(spans)
            for piece, text in released:
                entry, owner, key = self._pieces.pop(piece)
                if owner[key] != text:
                    owner[key] = text
                    entry.changed = True
                entry.waiting -= 1

    def _drain(self) -> bytes | None:
        out: list[bytes] = []
        while self._queue and self._queue[0].waiting == 0:
            out.append(self._queue.popleft().render())
        return b"".join(out) if out else None


def _parse(api: str, obj: dict[str, Any], name: str | None = None) -> _Parsed:
    """Which strings of one event are generated text, and which channels it ends."""
    parsed = _Parsed()
    if api == "converse":  # Bedrock: the event's name is in its frame's headers
        _parse_converse(obj, name, parsed)
        return parsed
    if api == "generate_content":
        _parse_gemini(obj, parsed)
        return parsed
    kind = obj.get("type")
    if ("error" in obj and kind is None) or kind in _TERMINAL:
        parsed.terminal = True
    if api in ("chat", "completions"):
        for position, choice in enumerate(obj.get("choices") or ()):
            if not isinstance(choice, dict):
                continue
            channel = ("choice", choice.get("index", position))
            delta = choice.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                parsed.slots.append((channel, delta, "content"))
            elif isinstance(choice.get("text"), str):
                parsed.slots.append((channel, choice, "text"))
            if isinstance(delta, dict):
                _chat_calls(channel, delta, parsed)
            if choice.get("finish_reason") is not None:
                parsed.finals.add(channel)
    elif api == "responses":
        _parse_responses(obj, kind, parsed)
    elif api == "messages":
        index = obj.get("index")
        delta = obj.get("delta")
        if kind == "content_block_delta" and isinstance(delta, dict) and \
                isinstance(delta.get("text"), str):
            parsed.slots.append((("block", index), delta, "text"))
        elif kind == "content_block_delta" and isinstance(delta, dict) and \
                isinstance(delta.get("partial_json"), str):
            parsed.calls.append(((("block", index), "input"), delta, "partial_json"))
        elif kind == "content_block_stop":
            parsed.finals.add(("block", index))
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use" and \
                    block.get("input"):
                parsed.whole_calls.append((block, "input"))
    return parsed


def _chat_calls(channel: Hashable, delta: dict[str, Any], parsed: _Parsed) -> None:
    for position, call in enumerate(delta.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            which = call.get("index", position)
            parsed.calls.append(((channel, which), function, "arguments"))
    legacy = delta.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        parsed.calls.append(((channel, "function_call"), legacy, "arguments"))


def _parse_converse(obj: dict[str, Any], name: str | None, parsed: _Parsed) -> None:
    channel = ("block", obj.get("contentBlockIndex"))
    delta = obj.get("delta")
    if name == "contentBlockDelta" and isinstance(delta, dict) and \
            isinstance(delta.get("text"), str):
        parsed.slots.append((channel, delta, "text"))
    elif name == "contentBlockStop":
        parsed.finals.add(channel)
    elif name == "messageStop":
        parsed.terminal = True


def _parse_gemini(obj: dict[str, Any], parsed: _Parsed) -> None:
    """A Gemini chunk: text parts per candidate, whole function calls, and the candidates
    it finishes (an error chunk ends them all)."""
    if "error" in obj:
        parsed.terminal = True
        return
    for position, candidate in enumerate(obj.get("candidates") or ()):
        if not isinstance(candidate, dict):
            continue
        channel = ("candidate", candidate.get("index", position))
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str) and part.get("thought") is not True:
                parsed.slots.append((channel, part, "text"))
            call = part.get("functionCall")
            if isinstance(call, dict) and "args" in call:
                parsed.whole_calls.append((call, "args"))
        if candidate.get("finishReason"):
            parsed.finals.add(channel)


def _parse_responses(obj: dict[str, Any], kind: Any, parsed: _Parsed) -> None:
    channel = (obj.get("output_index"), obj.get("content_index"))
    if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
        parsed.slots.append((channel, obj, "delta"))
    elif kind == "response.output_text.done" and isinstance(obj.get("text"), str):
        parsed.finals.add(channel)
        parsed.whole.append((obj, "text"))
    elif kind == "response.content_part.done":
        parsed.finals.add(channel)
        part = obj.get("part")
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parsed.whole.append((part, "text"))
    elif kind == "response.function_call_arguments.delta" and \
            isinstance(obj.get("delta"), str):
        parsed.calls.append(((("call", obj.get("output_index")), 0), obj, "delta"))
    elif kind == "response.function_call_arguments.done":
        parsed.finals.add(("call", obj.get("output_index")))
        if isinstance(obj.get("arguments"), str):
            parsed.whole_calls.append((obj, "arguments"))
    elif kind == "response.output_item.done":
        _whole_item(obj.get("item"), obj.get("output_index"), parsed)
    elif kind in _TERMINAL:
        response = obj.get("response")
        output = response.get("output") if isinstance(response, dict) else None
        for index, item in enumerate(output if isinstance(output, list) else ()):
            _whole_item(item, index, parsed)


def _whole_item(item: Any, index: Any, parsed: _Parsed) -> None:
    if isinstance(item, dict) and item.get("type") == "function_call" and \
            isinstance(item.get("arguments"), str):
        parsed.finals.add(("call", index))
        parsed.whole_calls.append((item, "arguments"))
        return
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return
    for position, part in enumerate(item["content"]):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parsed.finals.add((index, position))
            parsed.whole.append((part, "text"))
