"""Plain-ASGI plumbing for the proxy routes (no framework on the hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from tokenstile.errors import GatewayError
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


async def read_body(receive: Receive, limit: int) -> bytes:
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
                                   code="request_too_large")
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
    mid-stream is not answered twice; sends after a disconnect are dropped quietly."""

    __slots__ = ("_send", "closed", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.closed = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        try:
            await self._send(message)
        except OSError:
            self.closed = True

    async def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        await self({"type": "http.response.start", "status": status, "headers": list(headers)})

    async def body(self, data: bytes, more: bool) -> None:
        await self({"type": "http.response.body", "body": data, "more_body": more})


async def send_raw(send: ResponseTracker, status: int, body: bytes, content_type: str,
                   headers: dict[str, str], request_id: str) -> None:
    await send.start(status, [(b"content-type", content_type.encode("latin-1")),
                              *encode_headers(headers, request_id)])
    await send.body(body, more=False)


async def send_json(send: ResponseTracker, status: int, body: bytes, headers: dict[str, str],
                    request_id: str) -> None:
    await send_raw(send, status, body, "application/json", headers, request_id)


def sse_error(wire: WireFormat, err: GatewayError) -> bytes:
    """An error event that each provider's SDK raises when it reads it mid-stream."""
    if wire == "anthropic":
        return b"event: error\ndata: " + err.body("anthropic") + b"\n\n"
    return b"data: " + err.body("openai") + b"\n\n"


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)
