"""AWS event streams (``application/vnd.amazon.eventstream``): how Bedrock streams.

A stream is a run of binary frames: a 12-byte prelude (total length, headers length, CRC32
of those 8 bytes), headers (``:message-type``, ``:event-type``, ``:content-type``, or
``:exception-type`` for an error), a payload (JSON on Bedrock) and a CRC32 of everything
before it. The gateway relays whole frames, as it relays whole SSE events: ``FrameSplitter``
cuts them by their prelude as bytes arrive, ``decode`` reads one with botocore's
``botocore.eventstream`` (which checks both CRCs and parses the headers), and ``encode``
writes the frames the gateway sends itself (errors, translated streams) per the documented
format, with string headers only, as Bedrock's own frames have.

botocore comes with the ``bedrock`` extra (``pip install 'tokenstile[bedrock]'``); without it
this module imports, and decoding says what to install.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any
from zlib import crc32

import orjson

CONTENT_TYPE = "application/vnd.amazon.eventstream"

_PRELUDE = struct.Struct("!III")
_LENGTHS = struct.Struct("!II")
_CRC = struct.Struct("!I")
_MIN_FRAME = 16  # a prelude and a message CRC, nothing else
# botocore's own bounds: 128 KiB of headers, 24 MiB of payload.
_MAX_FRAME = 16 + 128 * 1024 + 24 * 1024 * 1024
_STRING = 7


class StreamFramingError(Exception):
    """The upstream sent bytes that are not an event stream (a broken stream)."""


def _botocore_eventstream() -> Any:
    """botocore's event-stream module, imported on the first Bedrock stream (a gateway
    without Bedrock upstreams never loads botocore)."""
    try:
        from botocore import eventstream
    except ImportError:  # pragma: no cover - the [bedrock] extra is not installed
        raise RuntimeError("Bedrock needs botocore: pip install 'tokenstile[bedrock]'") from None
    return eventstream


class FrameSplitter:
    """Feed raw bytes; get back complete frames, each exactly as it was sent."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        frames: list[bytes] = []
        start, size = 0, len(buffer)
        while size - start >= 4:
            length = int.from_bytes(buffer[start:start + 4], "big")
            if not _MIN_FRAME <= length <= _MAX_FRAME:
                raise StreamFramingError(f"an event stream frame of {length} bytes")
            if size - start < length:
                break
            frames.append(buffer[start:start + length])
            start += length
        self._buffer = buffer[start:]
        return frames

    def rest(self) -> bytes:
        """A partial frame left when the stream ended is dropped: half a frame would
        break the client's decoder."""
        self._buffer = b""
        return b""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its kind (``event``, ``exception`` or ``error``), its name (the
    event or exception type) and its payload."""

    message_type: str
    name: str
    payload: bytes

    def json(self) -> Any:
        """The payload as JSON (None when it is not JSON)."""
        try:
            return orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            return None


def decode(frame: bytes) -> Frame:
    """One complete frame, checked and parsed by botocore."""
    eventstream = _botocore_eventstream()
    buffer = eventstream.EventStreamBuffer()
    buffer.add_data(frame)
    try:
        message = next(buffer)
    except (eventstream.ParserError, StopIteration) as exc:
        raise StreamFramingError(f"an event stream frame botocore cannot read: "
                                 f"{type(exc).__name__}") from None
    headers = message.headers
    kind = str(headers.get(":message-type") or "event")
    if kind == "exception":
        name = headers.get(":exception-type")
    elif kind == "error":
        name = headers.get(":error-code")
    else:
        name = headers.get(":event-type")
    return Frame(kind, str(name or ""), bytes(message.payload))


def encode(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One frame with string headers (the documented format)."""
    head = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode(), value.encode()
        head += bytes((len(raw_name),)) + raw_name + bytes((_STRING,))
        head += len(raw_value).to_bytes(2, "big") + raw_value
    total = _MIN_FRAME + len(head) + len(payload)
    lengths = _LENGTHS.pack(total, len(head))
    message = lengths + _CRC.pack(crc32(lengths)) + bytes(head) + payload
    return message + _CRC.pack(crc32(message))


def event(event_type: str, payload: Any) -> bytes:
    """An event frame with a JSON payload, as Bedrock writes them."""
    return encode([(":event-type", event_type), (":content-type", "application/json"),
                   (":message-type", "event")], orjson.dumps(payload))


def exception(exception_type: str, message: str) -> bytes:
    """An exception frame: boto3 raises it as an ``EventStreamError`` whose code is
    ``exception_type`` (a member of the stream's union, e.g. ``throttlingException``)."""
    return encode([(":exception-type", exception_type),
                   (":content-type", "application/json"),
                   (":message-type", "exception")], orjson.dumps({"message": message}))
