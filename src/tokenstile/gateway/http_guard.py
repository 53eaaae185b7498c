"""uvicorn's httptools protocol with the bounds it lacks before a request reaches the app.

uvicorn (with httptools) accepts request headers of any size and waits for them for ever: a
client can send a 1 GB header, or open a connection and trickle a byte now and then, and
hold memory or a socket as long as it likes. This protocol bounds the request line plus
headers to ``server.max_header_bytes`` (431) and the time to send them to
``server.header_timeout_s`` (408), and answers malformed HTTP (uvicorn's plain-text 400)
with a JSON error in the provider's shape. The body is bounded by the gateway itself
(``server.max_body_bytes``, ``server.body_timeout_s``).

The gateway serves no WebSocket (``tokenstile serve`` runs uvicorn with ``ws="none"``, which
also spares a worker the import of a WebSocket library): a request that asks to upgrade is
answered as the plain HTTP request it also is, without the two warnings uvicorn would log
for it each time (a stranger could repeat them into the log at will).

A response's head goes out with the first part of its body, in one write (uvicorn writes
each on its own: two system calls, and two packets, per response); a head with nothing after
it goes out at the end of the event loop's turn.

``tokenstile serve`` runs with it (``PROTOCOL`` names it for uvicorn's ``http=``).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokenstile.config import ServerConfig
from tokenstile.errors import bedrock_error_type, render_error
from tokenstile.types import WireFormat

log = logging.getLogger("tokenstile.http")

PROTOCOL = "tokenstile.gateway.http_guard:GuardedHttpToolsProtocol"
_DEFAULTS = ServerConfig()


def _server_config(app: Any) -> ServerConfig:
    """The running gateway's server settings (through uvicorn's middleware wrappers)."""
    for _ in range(8):
        runtime = getattr(app, "runtime", None)
        if runtime is not None:
            server: ServerConfig = runtime.config.server
            return server
        app = getattr(app, "app", None)
        if app is None:
            break
    return _DEFAULTS


class HeadWithBody:
    """The transport a response is written to, holding a response's head until the next
    write (its body), so that the two go out in one system call; a head with no write
    after it is sent at the end of the event loop's turn. Everything else is the
    connection's transport."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":  # a response's head
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Counts the bytes of each request's head and times it, and writes a response's head
    with its body; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_limit = _DEFAULTS.max_header_bytes
        self._head_timeout = _DEFAULTS.header_timeout_s
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._responses: HeadWithBody | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._responses = HeadWithBody(transport, self.loop)
        server = _server_config(self.app)
        self._head_limit, self._head_timeout = server.max_header_bytes, server.header_timeout_s
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # While a head is being read, feed the parser at most what is left of its budget,
        # so that no more than that is ever buffered for it.
        while data and self._in_head and not self.transport.is_closing():
            room = self._head_limit - self._head_bytes
            if room <= 0:
                self._refuse(431, f"the request headers are larger than "
                                  f"{self._head_limit:,} bytes", "request_headers_too_large")
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
        if data and not self.transport.is_closing():
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None and self._responses is not None:
            self.cycle.transport = self._responses  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "the request is not valid HTTP/1.1", "invalid_http")

    def _unsupported_upgrade_warning(self) -> None:
        pass  # served as plain HTTP; see the module docstring

    # -- helpers ----------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"the request headers did not arrive within "
                              f"{self._head_timeout:g} s", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer in the shape of the route asked for, then close the connection."""
        self._disarm()
        url = bytes(getattr(self, "url", b"") or b"")
        wire: WireFormat = "anthropic" if url.startswith(b"/v1/messages") else \
            "bedrock" if url.startswith(b"/model/") else \
            "gemini" if url.startswith(b"/v1beta/") or (
                url.startswith(b"/v1/models/") and b":" in url) else "openai"
        body = render_error(wire, status, "tokenstile: " + message, code=code)
        kind = f"x-amzn-errortype: {bedrock_error_type(status)}\r\n" if wire == "bedrock" \
            else ""
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"content-type: application/json\r\n{kind}"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        log.debug("refused a connection: %s", message)
        out = self._responses or self.transport  # after any response still held
        out.write(head + body)
        out.close()
        self._in_head = False
