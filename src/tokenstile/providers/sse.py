"""Server-sent events, split at event boundaries as bytes arrive.

The gateway relays whole events (never half of one) so it can drop or rewrite a single event
without re-encoding the stream, and so a client sees events exactly as the upstream framed
them.
"""

from __future__ import annotations

from typing import Any

import orjson


class EventSplitter:
    """Feed raw bytes; get back complete events (each including its trailing blank line)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            crlf = buffer.find(b"\r\n\r\n", start)
            if crlf != -1 and (end == -1 or crlf < end):
                events.append(buffer[start : crlf + 4])
                start = crlf + 4
            elif end != -1:
                events.append(buffer[start : end + 2])
                start = end + 2
            else:
                break
        self._buffer = buffer[start:]
        return events

    def rest(self) -> bytes:
        """Whatever arrived after the last complete event (an unterminated tail)."""
        tail, self._buffer = self._buffer, b""
        return tail


def event_fields(event: bytes) -> tuple[str | None, bytes]:
    """The ``event:`` name and the joined ``data:`` payload of one event."""
    name: str | None = None
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, b"\n".join(data)


def json_object(data: bytes) -> dict[str, Any] | None:
    """An event's ``data:`` payload as a JSON object; None when it is anything else
    (``[DONE]``, a keep-alive, a JSON array or scalar, broken JSON)."""
    if not data.startswith(b"{"):
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def event_json(event: bytes) -> dict[str, Any] | None:
    """The ``data:`` payload of one whole event as a JSON object (see ``json_object``)."""
    return json_object(event_fields(event)[1])


def data_event(payload: Any) -> bytes:
    """One event carrying ``payload`` as JSON: ``data: {...}`` (OpenAI's streams)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def named_event(name: str, payload: Any) -> bytes:
    """One named event carrying ``payload`` as JSON: ``event: name`` then ``data: {...}``
    (Anthropic's streams)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
