"""A TCP forwarder to a shared server (PostgreSQL, Redis) that a test can break on purpose:
take it down and bring it back on the same port, cutting live connections; cut the
connection that sends a given command before the server sees it, or after it has run but
before its reply comes back; or keep that command from the server with the connection left
open. An outage without touching the server other test
runs share."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut_on: bytes = b""
        self._cuts_left = 0
        self._swallow = False
        self._reply_cut_on = b""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    def route(self, url: str) -> str:
        """``url`` (``scheme://host:port/…``) to the same server through this proxy."""
        return urlsplit(url)._replace(netloc=f"127.0.0.1:{self.port}").geturl()

    def cut_on(self, marker: bytes, times: int = 1) -> None:
        """The next ``times`` sends of a client that hold ``marker`` are dropped with their
        connection (the server never sees them); later ones pass."""
        self._cut_on, self._cuts_left, self._swallow = marker, times, False

    def cut_reply_on(self, marker: bytes) -> None:
        """The next send of a client that holds ``marker`` reaches the server, but the
        server's answer to it is dropped with the connection (a reply lost on its way)."""
        self._reply_cut_on = marker

    def swallow_on(self, marker: bytes, times: int = 1) -> None:
        """As ``cut_on``, but the connection stays open: the server never answers."""
        self._cut_on, self._cuts_left, self._swallow = marker, times, True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        cut_next_reply = False  # this connection's next answer is to be lost

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       from_client: bool) -> None:
            nonlocal cut_next_reply
            try:
                while data := await src.read(65536):
                    if from_client and self._cuts_left and self._cut_on in data:
                        self._cuts_left -= 1
                        if self._swallow:
                            continue
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    if not from_client and cut_next_reply:
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    if from_client and self._reply_cut_on and self._reply_cut_on in data:
                        self._reply_cut_on = b""
                        cut_next_reply = True
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        self._writers -= {writer, up_writer}


@contextlib.contextmanager
def proxy_in_thread(host: str, port: int) -> Iterator[TcpProxy]:
    """A ``TcpProxy`` on an event loop of its own thread, for clients that block the test's
    thread (a gateway started by a fixture, ``time.sleep`` in a helper)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tcp-proxy", daemon=True)
    thread.start()
    proxy = TcpProxy(host, port)
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(5)
        yield proxy
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(5)

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drain(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
