"""Script calls made in one turn of the event loop go to Redis together (one connection,
one write), and each still gets its own answer: its reply, its error, a reloaded script, or
a resend when the connection breaks. Against the real server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import redis

from tests.tcp_proxy import TcpProxy
from tokenstile.stores.counters import Charge, StoreUnavailable, counter_store_from_url
from tokenstile.stores.redis_client import RedisConnection

if TYPE_CHECKING:
    from conftest import Backend

pytestmark = pytest.mark.parametrize("backend", ["redis"], indirect=True)

ECHO = "if ARGV[1] == 'bad' then return redis.error_reply('bad input') end return ARGV[1]"
INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def named(url: str) -> tuple[str, str]:
    """``url`` with a client name of its own, and that name."""
    name = f"pipeline-{uuid.uuid4().hex[:10]}"
    return f"{url}&client_name={name}", name


def clients_named(backend: Backend, name: str) -> int:
    client = backend.redis()
    assert isinstance(client, redis.Redis)
    with client:
        return sum(1 for c in client.client_list() if c.get("name") == name)


@pytest.fixture
async def proxy(backend: Backend) -> AsyncIterator[TcpProxy]:
    target = urlsplit(backend.url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_concurrent_admissions_share_one_connection_and_stay_exact(
        backend: Backend) -> None:
    url, name = named(backend.url)
    store = counter_store_from_url(url)
    try:  # the scripts loaded first (a server that lost them is the test after next)
        await store.reserve("warm", [Charge("warm", 1, None, 3600, ())], 1e12, b"")
        await store.settle("warm", [])
        reserved = await asyncio.gather(*(
            store.reserve(f"r{i}", [Charge("tokens", 7, 1_000, 3600, ())], 1e12, b"row")
            for i in range(300)))
        # 300 scripts sent one by one would have spread over the pool's 64 connections
        assert clients_named(backend, name) == 1
        admitted = [i for i, outcome in enumerate(reserved) if outcome.admitted]
        assert len(admitted) == 1_000 // 7
        assert await store.read(["tokens"]) == [7 * len(admitted)]
        settled = await asyncio.gather(*(store.settle(f"r{i}", [("tokens", -7)])
                                         for i in admitted))
        assert all(settled) and await store.read(["tokens"]) == [0]
        assert clients_named(backend, name) == 1
    finally:
        await store.close()


async def test_each_call_of_a_batch_gets_its_own_reply_or_error(backend: Backend) -> None:
    url, name = named(backend.url)
    conn = RedisConnection(url, "test store", wait_s=1.0, slack_s=0.5, own=frozenset({"prefix"}))
    echo = conn.client.register_script(ECHO)
    try:
        await conn.client.script_load(ECHO)
        args = ["a", "bad", "c", "bad", "e"]
        replies = await asyncio.gather(
            *(conn.run_script("echo", echo, [], [arg]) for arg in args), return_exceptions=True)
        assert replies[0::2] == [b"a", b"c", b"e"]
        for refused in replies[1::2]:
            assert isinstance(refused, StoreUnavailable) and "bad input" in str(refused)
        assert clients_named(backend, name) == 1
    finally:
        await conn.close()


async def test_a_script_the_server_lost_is_loaded_and_run_once_per_call(
        backend: Backend) -> None:
    conn = RedisConnection(backend.url, "test store", wait_s=1.0, slack_s=0.5,
                           own=frozenset({"prefix"}))
    incr = conn.client.register_script(INCR)
    key = f"{{{backend.tag}}}:c:lost"
    try:
        # As after SCRIPT FLUSH or a restart (not run here: the server is shared)
        incr.sha = "0" * 40
        replies = await asyncio.gather(*(conn.run_script("incr", incr, [key], [1])
                                         for _ in range(20)))
        assert sorted(replies) == list(range(1, 21))
        assert incr.sha != "0" * 40
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def bumping(backend: Backend, proxy: TcpProxy, options: str = "", slack_s: float = 0.5
                  ) -> AsyncIterator[tuple[RedisConnection, Callable[[], Awaitable[Any]]]]:
    """A connection through ``proxy`` (``options`` added to its URL) and a call that adds 1
    to a key of this test's and returns the sum, made once already (connected, loaded)."""
    conn = RedisConnection(proxy.route(backend.url) + options, "test store", wait_s=1.0,
                           slack_s=slack_s, own=frozenset({"prefix"}))
    incr = conn.client.register_script(INCR)
    key = f"{{{backend.tag}}}:c:bumped"
    try:
        assert await conn.run_script("incr", incr, [key], [1]) == 1
        yield conn, lambda: conn.run_script("incr", incr, [key], [1])
    finally:
        await conn.close()


async def test_a_batch_cut_on_its_way_is_sent_again_on_a_fresh_connection(
        backend: Backend, proxy: TcpProxy) -> None:
    async with bumping(backend, proxy) as (_, bump):
        proxy.cut_on(b"EVALSHA")
        replies = await asyncio.gather(*(bump() for _ in range(50)))
        # the cut batch never reached the server: each call ran exactly once, afterwards
        assert sorted(replies) == list(range(2, 52))
        assert proxy.connections == 2


async def test_a_batch_cut_twice_fails_each_call_rather_than_hang(
        backend: Backend, proxy: TcpProxy) -> None:
    async with bumping(backend, proxy) as (_, bump):
        proxy.cut_on(b"EVALSHA", times=2)  # the batch, then its resend
        with pytest.raises(StoreUnavailable, match="Connection closed"):
            await bump()
        assert proxy.connections == 2
        assert await bump() == 2  # the next one passes


async def test_a_batch_the_server_never_answers_fails_each_call_within_the_guard(
        backend: Backend, proxy: TcpProxy) -> None:
    async with bumping(backend, proxy, "&socket_timeout=0.3&socket_connect_timeout=0.3"
                       "&timeout=0.3", slack_s=0.1) as (conn, bump):
        proxy.swallow_on(b"EVALSHA")
        started = time.monotonic()
        held = await asyncio.gather(*(bump() for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in held), held
        assert time.monotonic() - started <= conn.guard
        assert await bump() == 2  # on a new connection


async def test_a_settle_whose_reply_is_lost_fails_rather_than_run_twice(
        backend: Backend, proxy: TcpProxy) -> None:
    # Run again, it would find its reservation gone and answer "unknown", which admission
    # takes for a claim by crash recovery and corrects the counters once more. Failed, it
    # is deferred, and the deferred settle finds nothing left to do.
    store = counter_store_from_url(proxy.route(backend.url))
    tokens = [Charge("tokens", 100, 1_000, 3600, ())]
    try:  # the scripts loaded first: the lost reply is then one of a settle that ran
        assert (await store.reserve("w", [Charge("warm", 1, None, 3600, ())], 1e12, b"")).admitted
        assert await store.settle("w", [])
        assert (await store.reserve("r1", tokens, 1e12, b"row")).admitted
        proxy.cut_reply_on(b"EVALSHA")
        with pytest.raises(StoreUnavailable):
            await store.settle("r1", [("tokens", -60)])
        assert await store.read(["tokens"]) == [40]  # it ran, once
        assert await store.settle("r1", [("tokens", -60)]) is False
        assert await store.read(["tokens"]) == [40]
        # a reserve is safe to repeat: sent again, admitted, counted once
        proxy.cut_reply_on(b"EVALSHA")
        assert (await store.reserve("r2", tokens, 1e12, b"row")).admitted
        assert await store.read(["tokens"]) == [140]
        assert proxy.connections == 3
    finally:
        await store.close()
