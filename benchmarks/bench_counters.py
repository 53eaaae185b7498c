"""Latency of one admission on each counter store: reserve, and reserve + settle.

    python benchmarks/bench_counters.py [--n 5000] [--redis redis://127.0.0.1:6379/15]
                                        [--uvloop] [--rolling]

Each iteration is what one request costs: ``reserve`` of four calendar-window charges (a
per-minute request rate, per-minute tokens, a daily token budget, a monthly USD budget),
then ``settle`` with the actual amounts. ``--rolling`` adds a 60-bucket rolling window (61
keys summed). Calls run one after another, so the figures are the store's added latency,
not throughput under load. Redis keys use a fresh hash tag and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tokenstile.limits.windows import Window, rolling_bucket_labels, ttl_seconds, window_label
from tokenstile.stores.counters import Charge, CounterStore, counter_store_from_url


def build_charges(now: float, rolling: bool) -> list[Charge]:
    minute, day, month = Window("minute"), Window("day", "Europe/Berlin"), Window("month")
    charges = [
        Charge(f"user:u1:requests:{window_label(minute, now)}", 1, 1_000_000, 120),
        Charge(f"user:u1:tokens:{window_label(minute, now)}", 900, 10**12, 120),
        Charge(f"project:p1:tokens:{window_label(day, now)}", 900, 10**12, ttl_seconds(day, now)),
        Charge(
            f"organization:o1:usd:{window_label(month, now)}",
            45_000,
            10**15,
            ttl_seconds(month, now),
        ),
    ]
    if rolling:
        window = Window("rolling", length_s=3600)
        keys = tuple(f"key:k1:tokens:{label}" for label in rolling_bucket_labels(window, now))
        charges.append(Charge(keys[0], 900, 10**12, ttl_seconds(window, now), keys))
    return charges


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(store: CounterStore, n: int, rolling: bool) -> tuple[list[float], list[float]]:
    reserve_us: list[float] = []
    cycle_us: list[float] = []
    warmup = max(200, n // 10)
    for i in range(n + warmup):
        charges = build_charges(time.time(), rolling)
        deltas = [(c.key, -c.amount // 3) for c in charges]
        rid = f"bench-{i}"
        t0 = time.perf_counter()
        outcome = await store.reserve(rid, charges, time.time() + 60, b'{"id":"bench"}')
        t1 = time.perf_counter()
        assert outcome.admitted
        assert await store.settle(rid, deltas)
        t2 = time.perf_counter()
        if i >= warmup:
            reserve_us.append((t1 - t0) * 1e6)
            cycle_us.append((t2 - t0) * 1e6)
    return reserve_us, cycle_us


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--rolling", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="(applied before the loop starts)")
    args = parser.parse_args()

    tag = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        urls = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{Path(tmp) / 'counters.db'}",
            "redis": f"{args.redis}{'&' if '?' in args.redis else '?'}prefix={tag}",
        }
        profile = "4 charges" + (" + rolling(61 keys)" if args.rolling else "")
        print(f"counter store latency, {args.n} sequential admissions, {profile}")
        print(f"{'backend':8} {'reserve p50':>12} {'p99':>8} {'reserve+settle p50':>20} {'p99':>8}")
        for name, url in urls.items():
            store = counter_store_from_url(url)
            try:
                await store.ping()
            except Exception as exc:
                print(f"{name:8} skipped: {exc}")
                continue
            reserve_us, cycle_us = await bench(store, args.n, args.rolling)
            print(
                f"{name:8} {statistics.median(reserve_us):10.0f}µs {pct(reserve_us, 0.99):6.0f}µs"
                f" {statistics.median(cycle_us):18.0f}µs {pct(cycle_us, 0.99):6.0f}µs"
            )
            if name == "redis":
                await _drop_redis_keys(args.redis, tag)
            await store.close()


async def _drop_redis_keys(url: str, tag: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    keys = [k async for k in client.scan_iter(match=f"{{{tag}}}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main())
