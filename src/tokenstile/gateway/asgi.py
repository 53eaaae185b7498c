"""Plain-ASGI plumbing for the proxy routes (no framework on the hot path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

import orjson

from tokenstile.errors import GatewayError, bedrock_stream_error_type
from tokenstile.gateway.expiry import Expiry
from tokenstile.providers import eventstream
from tokenstile.types import WireFormat

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_HEADER_VALUE = 8192


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


def header_dict(scope: Scope) -> dict[str, str]:
    """Request headers, lower-cased names; the first of repeated names wins."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name not in headers:
            headers[name] = raw_value[:MAX_HEADER_VALUE].decode("latin-1")
    return headers


def header_size(scope: Scope) -> int:
    """Bytes of the request's path, query and headers (the server has no bound of its own
    on what reaches the app)."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    for name, value in scope.get("headers", ()):
        size += len(name) + len(value) + 4
    return size


def headers_too_large(limit: int) -> GatewayError:
    return GatewayError(431, f"the request headers are larger than {limit:,} bytes",
                        code="request_headers_too_large", headers={"connection": "close"})


def check_body_headers(headers: Mapping[str, str], limit: int) -> None:
    """Refuse before reading: a declared length past the limit, or a compressed body."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, f"the request body is larger than {limit:,} bytes",
                           code="request_too_large", headers={"connection": "close"})
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise GatewayError(415, f"content-encoding {encoding[:40]!r} is not supported; send "
                                "the JSON body uncompressed", code="unsupported_content_encoding")


async def read_body(receive: Receive, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole body, at most ``limit`` bytes (413), within ``timeout_s`` seconds (408: a
    client trickling its body would otherwise hold the request open for ever)."""
    if timeout_s is None:
        return await _read_body(receive, limit)
    expiry = Expiry(timeout_s)
    try:
        return await _read_body(receive, limit)
    except asyncio.CancelledError:
        if expiry.stop():
            raise GatewayError(408, f"the request body did not arrive within {timeout_s:g} s",
                               code="request_timeout", headers={"connection": "close"}) from None
        raise
    finally:
        expiry.stop()


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"the request body is larger than {limit:,} bytes",
                                   code="request_too_large", headers={"connection": "close"})
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def encode_headers(headers: dict[str, str], request_id: str) -> list[tuple[bytes, bytes]]:
    out = [(b"x-tokenstile-request-id", request_id.encode())]
    out.extend((k.encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items())
    return out


class ResponseTracker:
    """Wraps ``send`` and remembers whether a response has started, so an error raised
    mid-stream is not answered twice; sends after a disconnect are dropped quietly.

    A client that stops reading makes ``send`` wait for ever once the buffers are full:
    ``stalled`` (for streams) and ``send_raw`` (for whole bodies) give up after
    ``write_timeout`` seconds and treat it as a client that left.
    """

    __slots__ = ("_send", "_sending_since", "closed", "started", "write_timeout")

    def __init__(self, send: Send, write_timeout: float | None = None) -> None:
        self._send = send
        self.started = False
        self.closed = False
        self.write_timeout = write_timeout
        self._sending_since = 0.0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        self._sending_since = time.monotonic()
        try:
            await self._send(message)
        except OSError:
            self.closed = True
        finally:
            self._sending_since = 0.0

    async def stalled(self) -> None:
        """Returns once one send has waited ``write_timeout`` seconds (never without one)."""
        if self.write_timeout is None:
            await asyncio.Event().wait()
            return
        limit = self.write_timeout
        while True:
            await asyncio.sleep(max(0.05, limit / 4))
            since = self._sending_since
            if since and time.monotonic() - since >= limit:
                return

    async def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        await self({"type": "http.response.start", "status": status, "headers": list(headers)})

    async def body(self, data: bytes, more: bool) -> None:
        await self({"type": "http.response.body", "body": data, "more_body": more})


async def send_raw(send: ResponseTracker, status: int, body: bytes, content_type: str,
                   headers: dict[str, str], request_id: str) -> None:
    expiry = Expiry(send.write_timeout) if send.write_timeout is not None else None
    try:
        await send.start(status, [(b"content-type", content_type.encode("latin-1")),
                                  *encode_headers(headers, request_id)])
        await send.body(body, more=False)
    except asyncio.CancelledError:
        if expiry is not None and expiry.stop():
            send.closed = True
            raise ClientDisconnected() from None
        raise
    finally:
        if expiry is not None:
            expiry.stop()


async def send_json(send: ResponseTracker, status: int, body: bytes, headers: dict[str, str],
                    request_id: str) -> None:
    await send_raw(send, status, body, "application/json", headers, request_id)


def sse_error(wire: WireFormat, err: GatewayError) -> bytes:
    """An error event that each provider's SDK raises when it reads it mid-stream (for
    Bedrock, an event stream exception frame)."""
    if wire == "bedrock":
        return eventstream.exception(bedrock_stream_error_type(err.status), err.message)
    if wire == "anthropic":
        return b"event: error\ndata: " + err.body("anthropic") + b"\n\n"
    if wire == "gemini":  # google-genai raises a chunk that is an error object
        return b"data: " + err.body("gemini") + b"\r\n\r\n"
    return b"data: " + err.body("openai") + b"\n\n"


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)
