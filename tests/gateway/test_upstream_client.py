"""The upstream client: what one caller's call leaves behind never reaches another's, and
the lean HTTP/1.1 client of the hot call against upstreams that misbehave on the wire."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import hashlib
import ipaddress
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from tokenstile.config import UpstreamConfig
from tokenstile.gateway.upstream import UpstreamClient, UpstreamTimeout, UpstreamUnreachable
from tokenstile.gateway.upstream_response import UpstreamBodyError, UpstreamResponse

JSON = {"content-type": "application/json"}


async def test_an_upstreams_cookies_are_not_sent_with_later_calls() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "caller-one-secret")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = UpstreamClient()
    config = UpstreamConfig(kind="openai", base_url=f"http://127.0.0.1:{port}/v1")
    # A host name (the default jar keeps no cookies for bare IP addresses)
    url = f"http://localhost:{port}/v1/chat/completions"
    try:
        for _ in range(2):
            resp = await client.post("up", config, url, b"{}", {"content-type": "application/json"})
            assert resp.status == 200
            resp.release()
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == [None, None]


# A raw upstream: each connection is handed to ``serve``, which reads requests with
# ``read_request`` and writes whatever bytes the test wants.
Serve = Callable[["Conn"], Awaitable[None]]


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read_request(self) -> tuple[str, dict[str, str], bytes] | None:
        """(request line, lower-cased headers, body), or None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line, *rest = head.decode().split("\r\n")
        headers = {k.lower(): v for k, _, v in (h.partition(": ") for h in rest if h)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return line, headers, body

    async def answer(self, body: bytes, status: int = 200,
                     headers: tuple[str, ...] = ("content-type: application/json",)) -> None:
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{h}\r\n" for h in headers)
        self.writer.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()


class RawUpstream:
    def __init__(self, serve: Serve, ssl_context: ssl.SSLContext | None = None) -> None:
        self.serve, self.ssl_context = serve, ssl_context
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawUpstream:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self.handlers.add(task)
            try:
                await self.serve(Conn(reader, writer))
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                self.handlers.discard(task)

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    def config(self, scheme: str = "http", **settings: float) -> UpstreamConfig:
        return UpstreamConfig(base_url=f"{scheme}://localhost:{self.port}/v1", **settings)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://localhost:{self.port}/v1/chat/completions"


async def test_a_kept_alive_connection_serves_the_next_calls() -> None:
    async def serve(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            upstream.requests.append(request)
            await conn.answer(b'{"n": %d}' % len(upstream.requests),
                              headers=("content-type: application/json", "x-a: 1", "X-A: 2"))

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            for n in (1, 2, 3):
                resp = await client.post("up", upstream.config(), upstream.url(),
                                         b'{"q": 1}', {**JSON, "authorization": "Bearer k"})
                assert (resp.status, await resp.read()) == (200, b'{"n": %d}' % n)
                assert await resp.read() == b'{"n": %d}' % n  # read again: the same body
                assert resp.headers.getall("x-a") == ["1", "2"]
                assert resp.headers.get("Content-Type") == "application/json"
                resp.release()
        finally:
            await client.close()
    assert upstream.connections == 1
    line, headers, body = upstream.requests[0]
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert (headers["host"], headers["authorization"], body) == \
        (f"localhost:{upstream.port}", "Bearer k", b'{"q": 1}')
    assert headers["accept-encoding"] == "gzip, deflate"


async def test_max_connections_makes_callers_wait_for_a_free_connection() -> None:
    async def serve(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await asyncio.sleep(0.05)
            await conn.answer(b"{}")

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        config = upstream.config(max_connections=1)

        async def call() -> bytes:
            resp = await client.post("up", config, upstream.url(), b"{}", JSON)
            try:
                return await resp.read()
            finally:
                resp.release()

        try:
            assert await asyncio.gather(*(call() for _ in range(4))) == [b"{}"] * 4
        finally:
            await client.close()
    assert upstream.connections == 1


async def test_chunked_answers_arrive_piece_by_piece() -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]

    async def serve(conn: Conn) -> None:
        while await conn.read_request() is not None:
            conn.writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"transfer-encoding: chunked\r\n\r\n")
            for piece in pieces:
                conn.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await conn.writer.drain()
                await asyncio.sleep(0.02)
            conn.writer.write(b"0\r\n\r\n")

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            resp = await client.post("up", upstream.config(), upstream.url(), b"{}", JSON)
            got = [chunk async for chunk in resp.content.iter_any()]
            resp.release()
            assert got == pieces  # each as it came, not all at the end
            resp = await client.post("up", upstream.config(), upstream.url(), b"{}", JSON)
            assert await resp.read() == b"".join(pieces)
            resp.release()
        finally:
            await client.close()
    assert upstream.connections == 1


async def test_an_answer_framed_by_the_connections_end_is_read_whole() -> None:
    async def serve(conn: Conn) -> None:
        await conn.read_request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\"")
        await conn.writer.drain()
        await asyncio.sleep(0.02)
        conn.writer.write(b": 1}")

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            resp = await client.post("up", upstream.config(), upstream.url(), b"{}", JSON)
            assert await resp.read() == b'{"a": 1}'
            resp.release()
        finally:
            await client.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate"])
async def test_compressed_answers_are_decoded(encoding: str) -> None:
    text = b'{"choices": [' + b'{"text": "word"},' * 2000 + b"{}]}"
    if encoding == "gzip":
        packed = gzip.compress(text)
    elif encoding == "deflate":
        packed = zlib.compress(text)
    else:
        squeezer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = squeezer.compress(text) + squeezer.flush()

    async def serve(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.answer(packed, headers=(
                f"content-encoding: {encoding.split()[-1]}", "content-type: application/json"))

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            for _ in range(2):
                resp = await client.post("up", upstream.config(), upstream.url(), b"{}", JSON)
                assert await resp.read() == text
                resp.release()
        finally:
            await client.close()
    assert upstream.connections == 1


async def test_a_kept_alive_connection_closed_before_any_answer_is_tried_once_more() -> None:
    async def serve(conn: Conn) -> None:
        request = await conn.read_request()
        assert request is not None
        upstream.requests.append(request)
        if upstream.connections == 1:
            await conn.answer(b"{}")
            # The next request arrives on a connection the upstream then drops unanswered
            # (its idle timeout fired as the request went out).
            request = await conn.read_request()
            assert request is not None
            upstream.requests.append(request)
            conn.writer.transport.abort()
            return
        await conn.answer(b'{"second": true}')

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            resp = await client.post("up", upstream.config(), upstream.url(), b"1", JSON)
            await resp.read()
            resp.release()
            resp = await client.post("up", upstream.config(), upstream.url(), b"2", JSON)
            assert await resp.read() == b'{"second": true}'
            resp.release()
        finally:
            await client.close()
    assert upstream.connections == 2
    assert [body for _, _, body in upstream.requests] == [b"1", b"2", b"2"]


async def test_an_upstream_that_always_drops_the_request_is_tried_exactly_twice() -> None:
    async def serve(conn: Conn) -> None:
        await conn.read_request()
        conn.writer.transport.abort()

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            with pytest.raises(UpstreamUnreachable):
                await client.post("up", upstream.config(), upstream.url(), b"{}", JSON)
        finally:
            await client.close()
    assert upstream.connections == 2


async def test_a_refused_connection_is_unreachable_and_not_retried() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = UpstreamConfig(base_url=f"http://127.0.0.1:{port}/v1")
    client = UpstreamClient()
    try:
        with pytest.raises(UpstreamUnreachable, match="could not be reached"):
            await client.post("up", config, f"http://127.0.0.1:{port}/v1/x", b"{}", JSON)
    finally:
        await client.close()


async def test_a_connection_not_made_in_time_is_a_timeout_with_nothing_sent() -> None:
    # A listener whose backlog is full and that never accepts: SYNs go unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    config = UpstreamConfig(base_url=f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.3)
    client = UpstreamClient()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(UpstreamTimeout) as caught:
            await client.post("up", config, f"http://127.0.0.1:{port}/v1/x", b"{}", JSON)
    finally:
        await client.close()
        for sock in (*fillers, listener):
            sock.close()
    assert caught.value.sent is False
    assert 0.25 < loop.time() - started < 3


async def test_no_answer_within_the_read_timeout_is_a_timeout_that_was_sent() -> None:
    async def serve(conn: Conn) -> None:
        await conn.read_request()
        await asyncio.sleep(5)

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            with pytest.raises(UpstreamTimeout) as caught:
                await client.post("up", upstream.config(read_timeout_s=0.2), upstream.url(),
                                  b"{}", JSON)
        finally:
            await client.close()
    assert caught.value.sent is True


async def test_a_stream_that_stalls_mid_way_times_out_after_what_arrived() -> None:
    async def serve(conn: Conn) -> None:
        await conn.read_request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                          b"transfer-encoding: chunked\r\n\r\n")
        for _ in range(3):  # bytes keep coming for longer than the timeout, then stop
            conn.writer.write(b"9\r\ndata: x\n\n\r\n")
            await conn.writer.drain()
            await asyncio.sleep(0.15)
        await asyncio.sleep(5)

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        got: list[bytes] = []
        try:
            resp = await client.post("up", upstream.config(read_timeout_s=0.3), upstream.url(),
                                     b"{}", JSON)
            with pytest.raises(TimeoutError):
                async for chunk in resp.content.iter_any():
                    got.append(chunk)
            resp.release()
        finally:
            await client.close()
    assert b"".join(got) == b"data: x\n\n" * 3


async def _cut_after_ten_bytes(conn: Conn) -> None:
    """Answer with 10 bytes of the 100 announced, then close."""
    await conn.read_request()
    conn.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
    await conn.writer.drain()
    await asyncio.sleep(0.05)


async def _read_all(resp: UpstreamResponse, reading: str) -> None:
    if reading == "whole":
        await resp.read()
    else:
        async for _ in resp.content.iter_any():
            pass


async def _answer(client: UpstreamClient, upstream: RawUpstream, how: str,
                  **settings: float) -> UpstreamResponse:
    """The hot call (``post``, by the lean client) or a rare one (``request``: a stored
    response, a batch's output file; by aiohttp's client)."""
    config = upstream.config(**settings)
    if how == "post":
        return await client.post("up", config, upstream.url(), b"{}", JSON)
    return await client.request("GET", "up", config,
                                upstream.url().replace("chat/completions", "files/f"), {})


@pytest.mark.parametrize("how", ["post", "request"])
@pytest.mark.parametrize("reading", ["whole", "pieces"])
async def test_an_upstream_closing_mid_body_breaks_the_read(how: str, reading: str) -> None:
    """Whichever client made the call, a body broken off reads as ``UpstreamBodyError``,
    which is what relaying code catches (``BODY_ERRORS``), not an aiohttp error."""
    client = UpstreamClient()
    async with RawUpstream(_cut_after_ten_bytes) as upstream:
        try:
            resp = await _answer(client, upstream, how)
            assert resp.status == 200 and resp.headers["content-length"] == "100"
            with pytest.raises(UpstreamBodyError):
                await _read_all(resp, reading)
            resp.release()
        finally:
            await client.close()
    assert upstream.connections == 1


@pytest.mark.parametrize("reading", ["whole", "pieces"])
async def test_a_rare_call_whose_body_stalls_is_a_timeout(reading: str) -> None:
    """aiohttp's read timeout is one of its client errors too; it still reads as a timeout
    (which relaying code bills and answers as one), not as a broken body."""
    async def serve(conn: Conn) -> None:
        await conn.read_request()
        conn.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        await conn.writer.drain()
        await asyncio.sleep(5)

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            resp = await _answer(client, upstream, "request", read_timeout_s=0.3)
            with pytest.raises(TimeoutError) as raised:
                await _read_all(resp, reading)
            assert not isinstance(raised.value, UpstreamBodyError)
            resp.release()
        finally:
            await client.close()


async def test_a_body_released_unread_closes_its_connection() -> None:
    async def serve(conn: Conn) -> None:
        while await conn.read_request() is not None:
            conn.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            await conn.writer.drain()

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        try:
            for _ in range(2):
                resp = await client.post("up", upstream.config(), upstream.url(), b"{}", JSON)
                resp.release()  # half an answer: the connection cannot serve another
        finally:
            await client.close()
    assert upstream.connections == 2


async def test_a_large_body_is_streamed_whole() -> None:
    body = bytes(range(256)) * (6 * 1024 * 1024 // 256)

    async def serve(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            await asyncio.sleep(0.05)  # the socket's buffers fill: the sender must wait
            got = request[2]
            await conn.answer(b"%d %s" % (len(got), hashlib.sha256(got).hexdigest().encode()))

    client = UpstreamClient()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with RawUpstream(serve) as upstream:
        beat = asyncio.ensure_future(ticker())
        try:
            resp = await client.post("up", upstream.config(), upstream.url(), body, JSON)
            assert await resp.read() == \
                b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
            resp.release()
        finally:
            beat.cancel()
            await client.close()
    assert ticks > 10  # the loop ran other tasks while the body went out


async def test_an_upload_the_upstream_stops_reading_times_out() -> None:
    async def serve(conn: Conn) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)  # reads no more of the body

    client = UpstreamClient()
    async with RawUpstream(serve) as upstream:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(UpstreamTimeout):
                await client.post("up", upstream.config(read_timeout_s=0.3), upstream.url(),
                                  b"x" * (32 * 1024 * 1024), JSON)
        finally:
            await client.close()
        assert loop.time() - started < 3


def _self_signed(directory: Path) -> tuple[Path, Path]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_to_an_upstream_whose_certificate_is_trusted(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def serve(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            await conn.answer(b'{"over": "tls", "got": "%s"}' % request[2])

    trusting = UpstreamClient(ssl.create_default_context(cafile=str(cert)))
    default = UpstreamClient()
    async with RawUpstream(serve, server_context) as upstream:
        try:
            for _ in range(2):
                resp = await trusting.post("up", upstream.config("https"),
                                           upstream.url("https"), b"abc", JSON)
                assert await resp.read() == b'{"over": "tls", "got": "abc"}'
                resp.release()
            # Without the certificate in its trust store the client refuses the upstream.
            with pytest.raises(UpstreamUnreachable):
                await default.post("up", upstream.config("https"), upstream.url("https"),
                                   b"abc", JSON)
        finally:
            await trusting.close()
            await default.close()
    # One kept alive for the trusted calls; the refused handshake never reached the server.
    assert upstream.connections == 1
