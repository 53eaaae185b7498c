"""A lean HTTP/1.1 client for the gateway's hot call: a POST to an upstream.

Built on asyncio protocols and httptools' response parser. aiohttp's client costs about a
fifth of the gateway's CPU per request (request and response objects, payload wrappers,
timer contexts, trace hooks); this does what the hot call needs and no more:

- one pool of kept-alive connections per origin (scheme, host, port), at most
  ``max_connections`` open (callers wait beyond), an idle connection reused for
  ``keepalive_s`` at most, the most recently used first;
- TLS with the ssl module's default context (certificates verified, or the context given);
- bodies of any size, sent with a ``content-length``, the large ones in slices with flow
  control; answers framed by ``content-length``, chunked, or the connection's end;
- ``gzip`` and ``deflate`` answers decoded (``accept-encoding: gzip, deflate`` is sent);
- a connect timeout, and a read timeout: no byte for ``read_timeout`` seconds while the
  caller waits for one (one timer per connection, checked when it fires rather than moved
  on every read);
- a connection the upstream closed before any byte of the answer is reported as
  ``ClosedEarly``: the request may be sent again (on a new connection).

Failures: ``ConnectFailed`` / ``ConnectTimeout`` (nothing was sent), ``ClosedEarly``,
``ResponseBroken`` (before the headers were complete), ``TimeoutError`` (no byte for the
read timeout); while the body is read, ``UpstreamBodyError`` and ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple, cast

import httptools
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from tokenstile.gateway.upstream_response import UpstreamBodyError

# Reading pauses while this much of an answer waits unread, and resumes when it is read.
_READ_HIGH_WATER = 256 * 1024
# A large body is written in slices of this size, waiting while the socket's buffer is full.
_WRITE_SLICE = 64 * 1024
# Bodies up to this size go out in the same write as the headers; larger ones (audio,
# images, batch files) in slices.
LARGE_BODY_BYTES = 512 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ConnectFailed(Exception):
    """The connection could not be made (refused, unresolvable, TLS refused)."""


class ConnectTimeout(Exception):
    """The connection was not made in time; nothing was sent."""


class ClosedEarly(Exception):
    """The upstream closed the connection before any byte of its answer."""


class ResponseBroken(Exception):
    """The answer's status line or headers were cut short or malformed."""


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class Target(NamedTuple):
    """Where one URL's requests go: its origin, the request line's target and ``host``."""

    origin: Origin
    path: str
    host_header: str


def target_of(scheme: str, host: str, port: int | None, path_and_query: str) -> Target:
    port = port or _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        shown = f"{shown}:{port}"
    return Target(Origin(scheme, host, port), path_and_query or "/", shown)


def request_head(method: str, target: Target, headers: Mapping[str, str],
                 length: int) -> bytes:
    """The request line and headers: the caller's, with ``host``, ``accept`` and
    ``accept-encoding`` unless given, and the body's ``content-length``."""
    lines = [f"{method} {target.path} HTTP/1.1\r\n"]
    given = set()
    for name, value in headers.items():
        lower = name.lower()
        if lower == "content-length" or lower == "transfer-encoding":
            continue
        given.add(lower)
        lines.append(f"{name}: {value}\r\n")
    if "host" not in given:
        lines.append(f"host: {target.host_header}\r\n")
    if "accept" not in given:
        lines.append("accept: */*\r\n")
    if "accept-encoding" not in given:
        lines.append("accept-encoding: gzip, deflate\r\n")
    lines.append(f"content-length: {length}\r\n\r\n")
    head = "".join(lines)
    if head.count("\n") != len(lines) + 1 or head.count("\r") != len(lines) + 1:
        raise ValueError("a request header's name or value holds a line break")
    return head.encode()


class Response:
    """An answer whose status and headers are in; its body arrives as it is read. Fits
    ``upstream_response.UpstreamResponse``."""

    __slots__ = (
        "_body",
        "_buffered",
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_error",
        "_header_list",
        "_released",
        "_until_close",
        "_waiter",
        "_whole",
        "headers",
        "status",
    )

    def __init__(self, conn: Connection) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self._conn = conn
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Any = None
        self._released = False
        self._header_list: list[tuple[str, str]] = []
        self._until_close = False
        self._whole = False  # read whole: never paused
        self._body: bytes | None = None

    @property
    def content(self) -> Response:
        return self

    async def read(self) -> bytes:
        self._whole = True
        self._conn.drained()
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error
        if self._chunks or self._body is None:  # read again: the same body
            self._body = (self._body or b"") + (
                self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks))
            self._chunks.clear()
            self._buffered = 0
        return self._body

    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self._conn.drained()
                yield data
            elif self._done:
                if self._error is not None:
                    raise self._error
                return
            else:
                await self._wait()

    async def json(self) -> Any:
        return orjson.loads(await self.read())

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._conn.finished(self, reuse=self._done and self._error is None)

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._conn.finished(self, reuse=False)

    async def _wait(self) -> None:
        if self._done:
            return
        waiter = self._waiter = self._conn.loop.create_future()
        self._conn.waiting()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._error = error
        self._wake()

    # httptools callbacks (through the connection)
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self, status: int) -> None:
        self.status = status
        headers = CIMultiDict(self._header_list)
        self.headers = CIMultiDictProxy(headers)
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip" or encoding == "x-gzip":
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = True  # zlib-wrapped or raw: known from the first byte
        self._until_close = "content-length" not in headers and \
            "chunked" not in headers.get("transfer-encoding", "").lower() and \
            status not in (204, 304) and status >= 200

    def on_body(self, body: bytes) -> None:
        if self._done:
            return
        decoder = self._decoder
        if decoder is not None:
            try:
                if decoder is True:
                    wbits = zlib.MAX_WBITS if body[0] & 0x0F == 8 else -zlib.MAX_WBITS
                    decoder = self._decoder = zlib.decompressobj(wbits)
                body = decoder.decompress(body)
            except zlib.error:
                self._conn.broken(UpstreamBodyError("the upstream's compressed body is corrupt"))
                return
            if not body:
                return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_HIGH_WATER and not self._whole:
            self._conn.pause()
        self._wake()

    def on_message_complete(self) -> None:
        if self._done:
            return
        decoder = self._decoder
        if decoder is not None and decoder is not True:
            try:
                tail = decoder.flush()
            except zlib.error:
                self._conn.broken(UpstreamBodyError("the upstream's compressed body is corrupt"))
                return
            if tail:
                self._chunks.append(tail)
        self._done = True
        self._wake()


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Connection(asyncio.Protocol):
    """One kept-alive connection to an origin; one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.counted = True  # in the pool's count of open connections
        self.idle_since = 0.0
        self.heard = False  # a byte of the current answer arrived
        self.headers_waiter: asyncio.Future[None] | None = None
        self.read_timeout = 0.0
        self.last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reusable = True  # the upstream did not ask to close after this answer

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.pool.live.add(self)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._done:
            # Bytes nobody asked for: this connection's framing can no longer be trusted.
            self._close()
            return
        self.heard = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # malformed framing (or a callback's failure)
            self.broken(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("connection lost while writing"))
        response = self.response
        if response is not None and not response._done:
            waiter = self.headers_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ResponseBroken("the connection closed in the headers")
                                     if self.heard else ClosedEarly())
            elif response._until_close:
                response.on_message_complete()
            else:
                response._fail(UpstreamBodyError(
                    "the upstream closed the connection before the body was complete"))
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.on_header(name, value)

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): the real one follows
            response._header_list.clear()
            return
        response.on_headers_complete(status)
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.on_body(body)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if response.status == 0:
            return  # the end of an interim answer
        response.on_message_complete()
        if not self.parser.should_keep_alive():
            self._reusable = False

    # the exchange
    async def exchange(self, head: bytes, body: bytes, read_timeout: float) -> Response:
        """Send one request; return its answer once the status and headers are in."""
        transport = self.transport
        assert transport is not None
        response = self.response = Response(self)
        self._reusable = True
        self.heard = False
        self.read_timeout = read_timeout
        waiter = self.headers_waiter = self.loop.create_future()
        if len(body) <= LARGE_BODY_BYTES:
            transport.write(head + body if body else head)
        else:  # the read timeout also bounds an upload that stops moving
            self.waiting()
            transport.write(head)
            view = memoryview(body)
            for start in range(0, len(body), _WRITE_SLICE):
                if self.closed:
                    break
                transport.write(view[start:start + _WRITE_SLICE])
                if self._writing_paused:
                    drain = self._drain = self.loop.create_future()
                    try:
                        await drain
                    except ConnectionResetError:
                        break
                    finally:
                        self._drain = None
                    self.last_read = self.loop.time()
        self.waiting()
        try:
            await waiter
        finally:
            self.headers_waiter = None
        return response

    def waiting(self) -> None:
        """The caller waits for bytes: the read timeout runs from now (or the last byte)."""
        now = self.loop.time()
        if now > self.last_read:
            self.last_read = now
        if self._timer is None and not self.closed:
            self._timer = self.loop.call_at(now + self.read_timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        response = self.response
        if response is None or response._done:
            return
        deadline = self.last_read + self.read_timeout
        waiting = self.headers_waiter is not None or response._waiter is not None
        if not waiting:
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._check_timeout)
            return
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())
        response._fail(TimeoutError())
        self._close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def broken(self, exc: Exception) -> None:
        """The answer cannot be read on: fail it and close the connection."""
        response = self.response
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ResponseBroken(f"malformed answer: {exc}"))
        if response is not None and not response._done:
            response._fail(exc if isinstance(exc, UpstreamBodyError)
                           else UpstreamBodyError(f"malformed answer: {exc}"))
        self._close()

    def pause(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def drained(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def finished(self, response: Response, reuse: bool) -> None:
        """The caller is done with ``response``: keep the connection for the next request
        when its answer was read whole, else close it."""
        if self.response is not response:
            return
        self.response = None
        self._stop_timer()
        if reuse and self._reusable and not self.closed:
            self.drained()
            self.pool.idle(self)
        else:
            self._close()

    def abandon(self) -> None:
        """The request was given up before its answer (cancelled, failed): close."""
        self.response = None
        self._close()

    def _close(self) -> None:
        self._stop_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            if self._writing_paused:  # close() would wait for the peer to read the rest
                self.transport.abort()
            else:
                self.transport.close()
        self.closed = True
        self.pool.forget(self)


class Pool:
    """The connections to one origin."""

    def __init__(self, origin: Origin, limit: int, keepalive_s: float,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.origin = origin
        self.limit = limit
        self.keepalive_s = keepalive_s
        self.ssl_context = ssl_context
        self.loop = asyncio.get_running_loop()
        self.open = 0
        self._idle: list[Connection] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Every connection open to the origin, idle or answering: closed with the pool.
        self.live: set[Connection] = set()

    async def acquire(self, connect_timeout: float, fresh: bool = False) -> Connection:
        while True:
            idle = self._idle
            while idle and not fresh:
                conn = idle.pop()
                if conn.closed or conn.transport is None or conn.transport.is_closing():
                    conn._close()
                    continue
                if self.loop.time() - conn.idle_since > self.keepalive_s:
                    conn._close()
                    continue
                return conn
            if self.open < self.limit:
                self.open += 1
                try:
                    return await self._connect(connect_timeout)
                except BaseException:
                    self.open -= 1
                    self._wake()
                    raise
            if fresh and idle:  # at the limit: an idle one makes room for a new one
                idle.pop(0)._close()
                continue
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the turn on
                raise

    async def _connect(self, limit_s: float) -> Connection:
        origin = self.origin
        context = self.ssl_context if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(limit_s):  # only when a connection is made
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context is not None else None)
        except TimeoutError:
            raise ConnectTimeout() from None
        except OSError as exc:
            raise ConnectFailed(type(exc).__name__) from None
        return conn

    def idle(self, conn: Connection) -> None:
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        self._wake()

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed: it no longer counts against the limit."""
        self.live.discard(conn)
        if conn.counted:
            conn.counted = False
            self.open -= 1
            if conn in self._idle:
                self._idle.remove(conn)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every connection, idle or still answering (a stream cut at shutdown)."""
        for conn in list(self.live):  # the idle ones are live too
            conn._close()
        self._idle.clear()
        self.live.clear()


class HttpClient:
    """Pools by origin (and their settings); ``send`` makes one request."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._pools: dict[tuple[Origin, int, float], Pool] = {}

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def pool(self, origin: Origin, limit: int, keepalive_s: float) -> Pool:
        key = (origin, limit, keepalive_s)
        pool = self._pools.get(key)
        if pool is None:
            context = self._context() if origin.scheme == "https" else None
            pool = self._pools[key] = Pool(origin, limit, keepalive_s, context)
        return pool

    async def send(self, target: Target, head: bytes, body: bytes, *, limit: int,
                   keepalive_s: float, connect_timeout: float,
                   read_timeout: float) -> Response:
        """One request; the answer once its headers are in. A connection that closes before
        any byte of the answer is tried once more, on a new connection."""
        pool = self.pool(target.origin, limit, keepalive_s)
        for attempt in (1, 2):
            conn = await pool.acquire(connect_timeout, fresh=attempt == 2)
            try:
                return await conn.exchange(head, body, read_timeout)
            except ClosedEarly:
                conn.abandon()
                if attempt == 2:
                    raise
            except BaseException:
                conn.abandon()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
