"""CPU per upstream call: the gateway's lean HTTP/1.1 client against an aiohttp session set
up as the gateway set up its own before (pooled, no cookie jar, decompressing).

Both make the same calls (a chat completion, whole and streamed, at concurrency 50, read to
the end and released) to the fake upstream, which runs on the other core; the client's
process CPU time is divided by the calls. Rounds alternate the two clients, and the medians
are reported.

    python benchmarks/bench_upstream_client.py            # ~1 minute
    python benchmarks/bench_upstream_client.py --calls 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import CHAT, STREAM, start_fake

from tokenstile.config import UpstreamConfig
from tokenstile.gateway.upstream import UpstreamClient

HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
Call = Callable[[bytes, bool], Awaitable[None]]


async def measure(call: Call, stream: bool, calls: int, concurrency: int) -> float:
    """CPU µs per call, after a warm-up."""
    body = orjson.dumps(STREAM if stream else CHAT)

    async def worker(count: int) -> None:
        for _ in range(count):
            await call(body, stream)

    await asyncio.gather(*(worker(20) for _ in range(concurrency)))
    started = time.process_time()
    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (calls // concurrency * concurrency) * 1e6


async def drain(resp: Any, stream: bool) -> None:
    """Read an answer to its end (chunk by chunk when streamed), as the relay does."""
    try:
        if stream:
            async for _ in resp.content.iter_any():
                pass
        else:
            await resp.read()
    finally:
        resp.release()


async def lean(url: str, calls: int, concurrency: int) -> tuple[float, float]:
    client = UpstreamClient()
    config = UpstreamConfig(base_url=url + "/v1", api_key="sk-bench")
    target = url + "/v1/chat/completions"

    async def call(body: bytes, stream: bool) -> None:
        await drain(await client.post("bench", config, target, body, HEADERS), stream)

    try:
        return (await measure(call, False, calls, concurrency),
                await measure(call, True, calls, concurrency))
    finally:
        await client.close()


async def with_aiohttp(url: str, calls: int, concurrency: int) -> tuple[float, float]:
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=512, keepalive_timeout=15,
                                     ttl_dns_cache=300, enable_cleanup_closed=False)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                    skip_auto_headers=("User-Agent",),
                                    cookie_jar=aiohttp.DummyCookieJar())
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=600)
    target = url + "/v1/chat/completions"

    async def call(body: bytes, stream: bool) -> None:
        await drain(await session.post(target, data=body, headers=HEADERS, timeout=timeout),
                    stream)

    try:
        return (await measure(call, False, calls, concurrency),
                await measure(call, True, calls, concurrency))
    finally:
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fake, url = start_fake()  # on core 1
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    results: dict[str, list[tuple[float, float]]] = {"aiohttp": [], "lean": []}
    try:
        for _ in range(args.rounds):
            results["aiohttp"].append(uvloop.run(with_aiohttp(url, args.calls,
                                                              args.concurrency)))
            results["lean"].append(uvloop.run(lean(url, args.calls, args.concurrency)))
    finally:
        fake.terminate()
        fake.wait(10)
    print(f"client CPU per call, median of {args.rounds} rounds of {args.calls:,} calls "
          f"at concurrency {args.concurrency}")
    print(f"{'client':<10} {'whole µs':>9} {'streamed µs':>12}")
    for name, runs in results.items():
        print(f"{name:<10} {statistics.median(r[0] for r in runs):>9.1f} "
              f"{statistics.median(r[1] for r in runs):>12.1f}")


if __name__ == "__main__":
    main()
