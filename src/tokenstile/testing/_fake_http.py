"""One HTTP request in flight at the fake upstream, and the watch on its client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qs

from tokenstile.providers.multipart import FilePart

from ._fake_core import NORMAL, Directives
from ._fake_responses import StoredResponse
from ._fake_state import FakeSettings
from ._fake_wire import StreamParts, Turn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Json = dict[str, Any]


class _Watch:
    """Notices the client hanging up while the fake waits (delays, hangs, slow streams)."""

    __slots__ = ("_gone", "_receive", "_task")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._gone.set()
                return

    @property
    def gone(self) -> bool:
        return self._gone.is_set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep; False if the client left meanwhile."""
        if self._gone.is_set():
            return False
        try:
            async with asyncio.timeout(seconds):
                await self._gone.wait()
        except TimeoutError:
            return True
        return False

    async def wait_gone(self) -> None:
        await self._gone.wait()

    def close(self) -> None:
        self._task.cancel()


# Gemini's routes: ``/v1beta/models/{model}:{method}`` (and ``/v1/``); its key may come in the
# query string.
GEMINI_PREFIXES = ("/v1beta/models/", "/v1/models/")


def is_gemini(path: str) -> bool:
    return path.startswith(GEMINI_PREFIXES) and ":" in path


def query_key(query: bytes) -> str | None:
    keys = parse_qs(query.decode("latin-1")).get("key")
    return keys[0] if keys else None


class _Req:
    """One HTTP request in flight, and what will go on its record."""

    __slots__ = (
        "anthropic", "api_key", "background", "bedrock", "body", "directives", "files",
        "gemini", "headers", "method", "model", "query", "raw", "raw_headers", "raw_path",
        "receive", "recorded", "rid", "route", "send", "started", "started_wall", "stream", "watch",
    )

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, route: str, rid: str
    ) -> None:
        self.receive = receive
        self.send = send
        self.route = route
        self.method: str = scope["method"]
        self.query: bytes = scope.get("query_string", b"")
        self.rid = rid
        self.raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw_path = scope.get("raw_path")
        self.raw_path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
        self.raw = b""
        self.api_key: str | None = None
        self.anthropic = route.startswith("/v1/messages")
        self.bedrock = route.startswith("/model/")
        self.gemini = is_gemini(route)
        if self.gemini:
            self.api_key = query_key(self.query)
        for name, value in self.raw_headers:
            if name in (b"x-api-key", b"x-goog-api-key"):
                self.api_key = value.decode("latin-1")
            elif name == b"authorization" and self.api_key is None:
                text = value.decode("latin-1")
                self.api_key = text[7:] if text[:7].lower() == "bearer " else text
            elif name == b"anthropic-version":
                self.anthropic = True
        self.body: Any = None
        self.files: tuple[FilePart, ...] = ()
        self.background: StoredResponse | None = None
        self.model = ""
        self.stream = False
        self.directives: Directives = NORMAL
        self.recorded = False
        self.watch: _Watch | None = None
        self.started = time.perf_counter()
        self.started_wall = time.time()

    def watcher(self) -> _Watch:
        if self.watch is None:
            self.watch = _Watch(self.receive)
        return self.watch

    def headers_value(self, name: bytes) -> str | None:
        return next((v.decode("latin-1") for k, v in self.raw_headers if k == name), None)

    def id_headers(self) -> list[tuple[bytes, bytes]]:
        rid = self.rid.encode()
        if self.bedrock:
            return [(b"x-amzn-requestid", rid)]
        return [(b"x-request-id", rid), (b"request-id", rid)]


class FakeHost(Protocol):
    """What the route modules (``_fake_batches``, ``_fake_bedrock``, ``_fake_media``) use of
    the ``FakeUpstream`` that serves them: its settings, and how it checks, records and
    answers a request."""

    settings: FakeSettings

    async def _error(self, r: _Req, status: int, message: str, retry_after: float | None = None,
                     kind: str | None = None) -> None: ...

    async def _prelude(self, r: _Req, directive_text: str) -> Directives | None: ...

    def _record(self, r: _Req, status: int, outcome: str, turn: Turn | None = None,
                output_tokens: int | None = None, input_tokens: int = 0,
                units: dict[str, int] | None = None, input_audio_tokens: int = 0) -> None: ...

    async def _send_json(self, r: _Req, status: int, payload: Json,
                         extra: list[tuple[bytes, bytes]] | None = None,
                         cut: bool = False) -> None: ...

    def _turn(self, r: _Req, d: Directives, *, object_id: str, item_prefix: str,
              call_prefix: str, counted_input: int, max_tokens: int | None, tools: object,
              include_usage: bool = False) -> Turn: ...

    async def _stream(self, r: _Req, d: Directives, turn: Turn, parts: StreamParts,
                      content_headers: list[tuple[bytes, bytes]] = ...) -> None: ...

    async def _answer(self, r: _Req, d: Directives, turn: Turn,
                      render_body: Callable[[Turn], Json],
                      render_stream: Callable[[Turn], StreamParts],
                      content_headers: list[tuple[bytes, bytes]] = ...,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None: ...

    def _record_media(self, r: _Req, units: dict[str, int], *, input_tokens: int = 0,
                      output_tokens: int = 0, input_audio_tokens: int = 0,
                      outcome: str = "completed") -> None: ...

    def _deliberate_cut(self) -> None: ...
