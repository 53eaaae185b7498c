"""Script calls that arrive in one turn of the event loop go to Redis together.

Every admission runs a Lua script (reserve) and every finished request another (settle).
Sent one by one through redis-py, each pays for a pool checkout, its own write and its own
timeout, a cost that grows with the number of calls waiting for a connection. Here the
calls made in one turn of the event loop are written as one pipeline (``EVALSHA`` each) on
one connection and their replies read in order: one checkout and one write for all of
them. Each call is still one command, run atomically by the server, and each caller gets
its own reply or error; nothing of one call depends on another's.

A batch in flight does not hold up the next: the calls that arrive meanwhile go out on
another connection of the pool. A connection that breaks is replaced once and the calls
still unanswered are sent again if they are safe to repeat (a reserve under the same id is
not charged twice); the others (a settle) fail, since the server may have run them, and
their caller applies them later by its own means. One timer bounds a whole batch (the
connection's guard, which its callers then need not set each): past it, the calls still
waiting fail, and the caller maps that to StoreUnavailable. A script the server does not
know (its cache flushed, or a restarted server) is answered ``NOSCRIPT`` without having
run: the caller then runs it through redis-py's ``Script``, which loads it and runs it
again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

# (the command, its caller's future, whether it may be sent again after a broken connection)
Call = tuple[tuple[Any, ...], asyncio.Future[Any], bool]


class Pipelined:
    """``EVALSHA`` calls on one pool, written together when they arrive together."""

    def __init__(self, pool: BlockingConnectionPool, guard_s: float) -> None:
        self._pool = pool
        self._guard_s = guard_s
        self._waiting: list[Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    def evalsha(self, sha: str, keys: Sequence[Any], args: Sequence[Any],
                repeatable: bool = True) -> asyncio.Future[Any]:
        """The reply of ``EVALSHA sha`` (raised if an error): sent at the end of this turn
        of the event loop with the other calls made in it. A call that is not
        ``repeatable`` fails rather than go again when the connection breaks before its
        reply: the server may have run it."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append((("EVALSHA", sha, len(keys), *keys, *args), reply, repeatable))
        return reply

    def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            async with asyncio.timeout(self._guard_s):  # one timer for the whole batch
                await self._exchange(batch)
        except BaseException as exc:
            failed = exc if isinstance(exc, Exception) else \
                RedisConnectionError("the gateway is shutting down")
            for _, waiter, _ in batch:
                if not waiter.done():
                    waiter.set_exception(failed)
            if not isinstance(exc, Exception):
                raise

    async def _exchange(self, batch: list[Call]) -> None:
        retried = False
        while batch:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            answered = 0
            try:
                commands = [command for command, _, _ in batch]
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                for _, waiter, _ in batch:
                    reply: Any
                    try:
                        reply = await conn.read_response()
                    except ResponseError as exc:  # this command's own error
                        reply = exc
                    answered += 1
                    if waiter.done():  # its caller gave up waiting
                        continue
                    if isinstance(reply, ResponseError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
                return
            except RedisConnectionError as exc:
                await conn.disconnect()
                if retried:
                    raise
                retried = True  # once, on a fresh connection, for those unanswered
                batch = batch[answered:]
                for _, waiter, repeatable in batch:
                    if not repeatable and not waiter.done():
                        waiter.set_exception(exc)
                batch = [call for call in batch if call[2]]
            except BaseException:  # a timeout: what the connection holds is unknown
                await conn.disconnect()
                raise
            finally:
                await self._pool.release(conn)

    async def close(self) -> None:
        """Let the batches already sent finish (each is bounded by the socket timeout)."""
        if self._waiting:
            self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
