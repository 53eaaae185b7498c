"""A response's head goes out with its body in one write (``http_guard.HeadWithBody``): one
system call and one packet per response instead of two; a head with nothing after it still
goes out at the end of the event loop's turn, and nothing is reordered or lost."""

from __future__ import annotations

import asyncio
from typing import Any

from tokenstile.gateway.http_guard import HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """A transport that records the system calls it would make."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, lines: Any) -> None:
        self.calls.append(("writelines", tuple(lines)))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


async def _turn() -> None:
    await asyncio.sleep(0)


def test_the_head_and_the_body_go_out_in_one_call() -> None:
    async def run() -> list[tuple[str, Any]]:
        transport = Recorder()
        out = HeadWithBody(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        out.write(HEAD)
        assert transport.calls == []  # held for its body
        out.write(b"{}")
        out.write(b"more")  # after the head, writes go straight through
        await _turn()
        return transport.calls

    assert asyncio.run(run()) == [("writelines", (HEAD, b"{}")), ("write", b"more")]


def test_a_head_alone_goes_out_at_the_end_of_the_turn() -> None:
    async def run() -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        transport = Recorder()
        out = HeadWithBody(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        out.write(HEAD)  # a stream's head, its first chunk not yet there
        before = list(transport.calls)
        await _turn()
        return before, transport.calls

    before, after = asyncio.run(run())
    assert before == [] and after == [("write", HEAD)]


def test_close_sends_a_held_head_first_and_the_rest_is_the_transports() -> None:
    async def run() -> Recorder:
        transport = Recorder()
        out = HeadWithBody(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        out.write(HEAD)
        out.close()
        assert out.is_closing() and out.get_extra_info("peername") == ("127.0.0.1", 1)
        await _turn()  # the scheduled flush finds nothing left to send
        return transport

    transport = asyncio.run(run())
    assert transport.calls == [("write", HEAD)] and transport.closed


def test_body_bytes_that_look_like_a_head_are_not_held_after_a_head() -> None:
    async def run() -> list[tuple[str, Any]]:
        transport = Recorder()
        out = HeadWithBody(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        out.write(HEAD)
        out.write(HEAD)  # a body that happens to look like one: it is the held head's body
        await _turn()
        return transport.calls

    assert asyncio.run(run()) == [("writelines", (HEAD, HEAD))]
