"""The CounterStore contract, run against memory, SQLite and Redis alike."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis.crc import key_slot

from tokenstile.limits.allowance import SEEN_TTL_S, Allowance, first_seen, window_amount
from tokenstile.stores.counters import (
    Charge,
    CounterStore,
    StoreConfigError,
    StoreUnavailable,
    counter_store_from_url,
    plan_reservation,
)
from tokenstile.stores.counters_redis import RedisCounterStore

if TYPE_CHECKING:
    from conftest import Backend

TTL = 3600
LEASE = 1_000.0
RECORD = b'{"id": "row"}\n\x00binary\xff'


def charge(key: str, amount: int, limit: int | None, *window: str, ttl: int = TTL) -> Charge:
    return Charge(key, amount, limit, ttl, tuple(window))


# --- reserve, settle, release -------------------------------------------------------------


async def test_reserve_then_settle_actual(store: CounterStore) -> None:
    charges = [charge("tok", 100, 1000), charge("req", 1, 10)]
    outcome = await store.reserve("r1", charges, LEASE, RECORD)
    assert outcome.admitted and outcome.used == [0, 0] and outcome.failed == []
    assert await store.read(["tok", "req", "missing"]) == [100, 1, 0]
    assert await store.settle("r1", [("tok", 40 - 100), ("req", 0)])
    assert await store.read(["tok", "req"]) == [40, 1]
    outcome = await store.reserve("r2", charges, LEASE, RECORD)
    assert outcome.used == [40, 1]
    assert await store.read(["tok"]) == [140]


async def test_release_is_a_settle_of_minus_the_reservation(store: CounterStore) -> None:
    await store.add([("tok", 7, TTL)])
    await store.reserve("r1", [charge("tok", 50, 100)], LEASE, RECORD)
    assert await store.settle("r1", [("tok", -50)])
    assert await store.read(["tok"]) == [7]
    assert await store.claim_expired(LEASE + 1) == []


async def test_settle_positive_delta(store: CounterStore) -> None:
    await store.reserve("r1", [charge("usd", 0, 1000)], LEASE, RECORD)
    assert await store.read(["usd"]) == [0]
    assert await store.settle("r1", [("usd", 1200)])  # actual above the reserve is counted
    assert await store.read(["usd"]) == [1200]
    refused = await store.reserve("r2", [charge("usd", 0, 1000)], LEASE, RECORD)
    assert not refused.admitted and refused.used == [1200]


async def test_all_or_nothing(store: CounterStore) -> None:
    await store.add([("b", 95, TTL)])
    charges = [charge("a", 10, 100), charge("b", 10, 100), charge("c", 5, None)]
    outcome = await store.reserve("r1", charges, LEASE, RECORD)
    assert not outcome.admitted
    assert outcome.failed == [1]
    assert outcome.used == [0, 95, 0]
    assert await store.read(["a", "b", "c"]) == [0, 95, 0]
    assert await store.settle("r1", [("a", -10)]) is False  # nothing was held
    assert await store.read(["a"]) == [0]


async def test_several_failures_are_all_reported(store: CounterStore) -> None:
    await store.add([("a", 10, TTL), ("b", 10, TTL)])
    outcome = await store.reserve(
        "r1", [charge("a", 1, 10), charge("x", 1, 10), charge("b", 1, 5)], LEASE, RECORD
    )
    assert not outcome.admitted and outcome.failed == [0, 2] and outcome.used == [10, 0, 10]


async def test_limit_boundaries(store: CounterStore) -> None:
    assert (await store.reserve("r1", [charge("k", 10, 10)], LEASE, RECORD)).admitted
    refused = await store.reserve("r2", [charge("k", 1, 10)], LEASE, RECORD)
    assert not refused.admitted and refused.used == [10]
    # An amount of zero fits exactly at the limit, not past it.
    assert (await store.reserve("r3", [charge("k", 0, 10)], LEASE, RECORD)).admitted
    await store.add([("k", 1, TTL)])
    assert not (await store.reserve("r4", [charge("k", 0, 10)], LEASE, RECORD)).admitted
    assert (await store.reserve("r5", [charge("z", 0, 0)], LEASE, RECORD)).admitted


async def test_limit_none_counts_without_cap(store: CounterStore) -> None:
    big = 10**15  # a million dollars in nano-USD
    outcome = await store.reserve("r1", [charge("usd", big, None)], LEASE, RECORD)
    assert outcome.admitted
    outcome = await store.reserve("r2", [charge("usd", big, None)], LEASE, RECORD)
    assert outcome.admitted and outcome.used == [big]
    assert await store.read(["usd"]) == [2 * big]


async def test_rolling_window_sums_its_buckets(store: CounterStore) -> None:
    await store.add([("b1", 30, TTL), ("b2", 40, TTL)])
    rolling = charge("b3", 20, 100, "b3", "b2", "b1")
    outcome = await store.reserve("r1", [rolling], LEASE, RECORD)
    assert outcome.admitted and outcome.used == [70]
    assert await store.read(["b1", "b2", "b3"]) == [30, 40, 20]
    outcome = await store.reserve("r2", [charge("b3", 11, 100, "b3", "b2", "b1")], LEASE, RECORD)
    assert not outcome.admitted and outcome.used == [90]
    # Once b1 falls out of the window, the same request fits.
    outcome = await store.reserve("r3", [charge("b4", 11, 100, "b4", "b3", "b2")], LEASE, RECORD)
    assert outcome.admitted and outcome.used == [60]


async def test_charges_sharing_keys_are_checked_after_all_increments(store: CounterStore) -> None:
    # Two charges write the same key: the check sees both increments.
    outcome = await store.reserve("r1", [charge("k", 6, 10), charge("k", 6, None)], LEASE, RECORD)
    assert not outcome.admitted and outcome.failed == [0]
    assert await store.read(["k"]) == [0]
    # A rolling charge sums a key another charge writes.
    charges = [charge("cur", 5, None), charge("other", 1, 9, "other", "cur")]
    outcome = await store.reserve("r2", charges, LEASE, RECORD)
    assert outcome.admitted
    outcome = await store.reserve("r3", charges, LEASE, RECORD)
    assert not outcome.admitted and outcome.failed == [1] and outcome.used == [5, 6]


async def test_same_rid_is_not_charged_twice(store: CounterStore) -> None:
    charges = [charge("k", 6, 10)]
    assert (await store.reserve("r1", charges, LEASE, RECORD)).admitted
    again = await store.reserve("r1", charges, LEASE, RECORD)
    assert again.admitted and again.used == [0]
    assert await store.read(["k"]) == [6]
    assert await store.settle("r1", [("k", -6)])
    assert await store.read(["k"]) == [0]


async def test_reservation_without_charges(store: CounterStore) -> None:
    outcome = await store.reserve("r1", [], 100.0, RECORD)
    assert outcome.admitted and outcome.used == []
    claimed = await store.claim_expired(101.0)
    assert [(c.rid, c.deltas, c.record) for c in claimed] == [("r1", (), RECORD)]


async def test_negative_amounts_are_rejected(store: CounterStore) -> None:
    with pytest.raises(ValueError):
        await store.reserve("r1", [charge("k", -1, 10)], LEASE, RECORD)


# --- settle edge cases --------------------------------------------------------------------


async def test_settle_unknown_rid_changes_nothing(store: CounterStore) -> None:
    await store.add([("k", 5, TTL)])
    assert await store.settle("nope", [("k", -5)]) is False
    assert await store.read(["k"]) == [5]


async def test_settle_twice(store: CounterStore) -> None:
    await store.reserve("r1", [charge("k", 5, 10)], LEASE, RECORD)
    assert await store.settle("r1", [("k", -1)])
    assert await store.settle("r1", [("k", -1)]) is False
    assert await store.read(["k"]) == [4]


async def test_settle_drops_deltas_of_vanished_keys_and_stops_at_zero(
    store: CounterStore, backend: Backend
) -> None:
    await store.reserve("r1", [charge("gone", 5, 10), charge("kept", 5, 10)], LEASE, RECORD)
    backend.drop("gone")
    await store.add([("kept", -3, TTL)])  # e.g. the counter was rebuilt lower
    assert await store.settle("r1", [("gone", 7), ("kept", -5)])
    assert await store.read(["gone", "kept"]) == [0, 0]
    assert backend.ttl("gone") is None  # not recreated without an expiry
    assert backend.ttl("kept") is not None


async def test_settle_merges_repeated_keys(store: CounterStore) -> None:
    await store.reserve("r1", [charge("k", 10, 100)], LEASE, RECORD)
    assert await store.settle("r1", [("k", -4), ("k", -3)])
    assert await store.read(["k"]) == [3]


# --- leases -------------------------------------------------------------------------------


async def test_claim_expired(store: CounterStore) -> None:
    await store.reserve("r1", [charge("k", 1, None), charge("j", 2, None)], 100.0, RECORD + b"1")
    await store.reserve("r2", [charge("k", 10, None)], 200.0, RECORD + b"2")
    await store.reserve("r3", [charge("k", 100, None)], 300.0, RECORD + b"3")
    assert await store.claim_expired(100.0) == []  # the lease ends *before* now
    claimed = await store.claim_expired(150.0)
    assert [c.rid for c in claimed] == ["r1"]
    assert claimed[0].record == RECORD + b"1"
    assert claimed[0].deltas == (("k", 1), ("j", 2))
    assert await store.settle("r1", [("k", -1)]) is False  # already claimed
    assert await store.read(["k", "j"]) == [111, 2]  # claimed charges stay counted
    claimed = await store.claim_expired(1_000.0)
    assert sorted(c.rid for c in claimed) == ["r2", "r3"]
    assert await store.claim_expired(1_000.0) == []


async def test_claim_expired_respects_limit_and_order(store: CounterStore) -> None:
    for i in (5, 3, 1, 4, 2):
        await store.reserve(f"r{i}", [charge("k", 1, None)], float(i), RECORD)
    first = await store.claim_expired(100.0, limit=2)
    assert [c.rid for c in first] == ["r1", "r2"]
    assert await store.claim_expired(100.0, limit=0) == []
    rest = await store.claim_expired(100.0, limit=10)
    assert [c.rid for c in rest] == ["r3", "r4", "r5"]


async def test_renew(store: CounterStore) -> None:
    await store.reserve("r1", [charge("k", 1, None)], 100.0, RECORD)
    await store.reserve("r2", [charge("k", 1, None)], 100.0, RECORD)
    await store.renew(["r1", "unknown"], 500.0)
    await store.renew(["r1"], 50.0)  # never moves a deadline back
    await store.renew([], 50.0)
    assert [c.rid for c in await store.claim_expired(200.0)] == ["r2"]
    assert await store.claim_expired(499.0) == []
    assert [c.rid for c in await store.claim_expired(501.0)] == ["r1"]
    assert await store.settle("unknown", []) is False


# --- TTLs, add, read ----------------------------------------------------------------------


async def test_ttls_are_set_and_only_extended(store: CounterStore, backend: Backend) -> None:
    await store.reserve("r1", [charge("k", 1, None, ttl=600)], LEASE, RECORD)
    ttl = backend.ttl("k")
    assert ttl is not None and 595 <= ttl <= 600
    await store.reserve("r2", [charge("k", 1, None, ttl=1200)], LEASE, RECORD)
    ttl = backend.ttl("k")
    assert ttl is not None and 1195 <= ttl <= 1200
    await store.reserve("r3", [charge("k", 1, None, ttl=60)], LEASE, RECORD)
    await store.add([("k", 1, 30)])
    ttl = backend.ttl("k")
    assert ttl is not None and 1190 <= ttl <= 1200
    await store.add([("forever", 1, 0)])
    assert backend.ttl("forever") is None
    assert await store.read(["k", "forever"]) == [4, 1]


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
async def test_keys_expire_on_the_store_clock(store: CounterStore, backend: Backend) -> None:
    await store.reserve("r1", [charge("k", 8, 10, ttl=60)], LEASE, RECORD)
    backend.clock.advance(59)
    assert await store.read(["k"]) == [8]
    backend.clock.advance(2)
    assert await store.read(["k"]) == [0]
    assert await store.settle("r1", [("k", -3)])  # the window is over: the delta is dropped
    assert await store.read(["k"]) == [0]
    outcome = await store.reserve("r2", [charge("k", 10, 10, ttl=60)], LEASE, RECORD)
    assert outcome.admitted and outcome.used == [0]
    backend.clock.advance(3600)
    await store.add([("other", 1, 60)])  # a write now and then purges expired rows
    assert await store.read(["k", "other"]) == [0, 1]


async def test_add_and_read(store: CounterStore) -> None:
    await store.add([("a", 5, TTL), ("b", 7, TTL), ("a", 1, TTL)])
    await store.add([])
    assert await store.read(["a", "b", "c"]) == [6, 7, 0]
    assert await store.read([]) == []
    await store.ping()


# --- no overshoot -------------------------------------------------------------------------


async def test_no_overshoot_concurrent_reserves(store: CounterStore) -> None:
    rng = random.Random(1)
    limit = 1_000
    amounts = [rng.randint(1, 40) for _ in range(500)]
    charges = [
        [charge("tok", amount, limit), charge("req", 1, None), charge("sum", 1, 400, "req")]
        for amount in amounts
    ]
    outcomes = await asyncio.gather(
        *(store.reserve(f"r{i}", c, LEASE, RECORD) for i, c in enumerate(charges))
    )
    admitted = [i for i, o in enumerate(outcomes) if o.admitted]
    reserved = sum(amounts[i] for i in admitted)
    assert 0 < len(admitted) < len(amounts)
    assert reserved <= limit
    assert await store.read(["tok", "req"]) == [reserved, len(admitted)]
    for i in admitted:
        assert outcomes[i].used[0] + amounts[i] <= limit
    # Settle every admitted reservation with a random actual <= reserved.
    actual = {i: rng.randint(0, amounts[i]) for i in admitted}
    settled = await asyncio.gather(
        *(store.settle(f"r{i}", [("tok", actual[i] - amounts[i])]) for i in admitted)
    )
    assert all(settled)
    assert await store.read(["tok"]) == [sum(actual.values())]


async def test_no_overshoot_with_interleaved_settles(store: CounterStore) -> None:
    stats = await hammer(store, "tok", "p0", 500, 1_000, seed=2)
    assert stats.admitted > 0 and stats.refused > 0
    assert stats.max_seen <= 1_000
    assert await store.read(["tok"]) == [stats.actual]


class Stats:
    def __init__(self) -> None:
        self.admitted = self.refused = self.actual = self.max_seen = 0


async def hammer(store: CounterStore, key: str, tag: str, n: int, limit: int, seed: int) -> Stats:
    """``n`` concurrent reserve → settle(actual <= reserved) cycles, with a watcher reading
    the counter throughout."""
    rng = random.Random(seed)
    stats = Stats()
    done = asyncio.Event()

    async def one(i: int) -> None:
        amount = rng.randint(1, limit // 20)
        outcome = await store.reserve(f"{tag}-{i}", [charge(key, amount, limit)], LEASE, RECORD)
        if not outcome.admitted:
            stats.refused += 1
            return
        assert outcome.used[0] + amount <= limit
        stats.admitted += 1
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        actual = rng.randint(0, amount)
        assert await store.settle(f"{tag}-{i}", [(key, actual - amount)])
        stats.actual += actual

    async def watch() -> None:
        while not done.is_set():
            stats.max_seen = max(stats.max_seen, (await store.read([key]))[0])
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(one(i) for i in range(n)))
    done.set()
    await watcher
    return stats


def _process_reserve_only(
    url: str, tag: str, n: int, limit: int, seed: int, at: float
) -> list[int]:
    """In a child process: ``n`` concurrent reserves; returns the admitted amounts."""

    async def run() -> list[int]:
        store = counter_store_from_url(url)
        rng = random.Random(seed)
        amounts = [rng.randint(1, limit // 200) for _ in range(n)]
        await asyncio.sleep(max(0.0, at - time.time()))  # start together with the others
        outcomes = await asyncio.gather(
            *(
                store.reserve(f"{tag}-{i}", [charge("once", a, limit)], LEASE, RECORD)
                for i, a in enumerate(amounts)
            )
        )
        await store.close()
        return [a for a, o in zip(amounts, outcomes, strict=True) if o.admitted]

    return asyncio.run(run())


def _process_hammer(
    url: str, tag: str, n: int, limit: int, seed: int, at: float
) -> tuple[int, int]:
    """In a child process: interleaved reserve/settle cycles; returns (actual, max seen)."""

    async def run() -> tuple[int, int]:
        store = counter_store_from_url(url)
        await asyncio.sleep(max(0.0, at - time.time()))
        stats = await hammer(store, "mixed", tag, n, limit, seed)
        await store.close()
        return stats.actual, stats.max_seen

    return asyncio.run(run())


def _warm_up() -> None:
    """Import the stores in the child before the timed part starts."""
    import tokenstile.stores.counters_redis
    import tokenstile.stores.counters_sqlite  # noqa: F401


@pytest.mark.timeout(60)
async def test_no_overshoot_across_processes(shared_backend: Backend) -> None:
    limit, n, procs = 2_000, 300, 3
    url = shared_backend.url
    if url.startswith("redis"):
        # Generous timeouts: on a loaded machine a spawned child's first connect can take
        # longer than the store's one-second default, which is an outage, not an overshoot.
        url += ("&" if "?" in url else "?") + \
            "socket_connect_timeout=5&socket_timeout=5&timeout=5"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.starmap(_warm_up, [()] * procs)

        at = time.time() + 0.3
        args = [(url, f"p{p}", n, limit, 100 + p, at) for p in range(procs)]
        admitted = await asyncio.to_thread(
            lambda: pool.starmap_async(_process_reserve_only, args).get(timeout=30)
        )
        store = counter_store_from_url(url)
        total = sum(sum(amounts) for amounts in admitted)
        assert total <= limit
        assert sum(1 for amounts in admitted if amounts) >= 2  # the processes overlapped
        assert await store.read(["once"]) == [total]
        assert sum(map(len, admitted)) < procs * n  # the limit was actually contended

        at = time.time() + 0.3
        args = [(url, f"q{p}", n, limit, 200 + p, at) for p in range(procs)]
        results = await asyncio.to_thread(
            lambda: pool.starmap_async(_process_hammer, args).get(timeout=30)
        )
        assert all(max_seen <= limit for _, max_seen in results)
        assert await store.read(["mixed"]) == [sum(actual for actual, _ in results)]
        await store.close()


# --- exact beyond 2^53 ---------------------------------------------------------------------
# Nano-USD amounts past 2^53 (about 9 million USD) are beyond what a double holds exactly;
# every backend must still count and compare them to the unit.

P53, P60 = 2**53, 2**60


async def test_limits_just_past_2_53_are_exact(store: CounterStore) -> None:
    limit = P53 + 1
    first = await store.reserve("r1", [charge("usd", P53, limit)], LEASE, RECORD)
    assert first.admitted and first.used == [0]
    second = await store.reserve("r2", [charge("usd", 1, limit)], LEASE, RECORD)
    assert second.admitted and second.used == [P53]
    # 2^53 + 2 rounds to 2^53 + 2, 2^53 + 1 to 2^53: as doubles this would still fit
    third = await store.reserve("r3", [charge("usd", 1, limit)], LEASE, RECORD)
    assert not third.admitted and third.used == [P53 + 1] and third.failed == [0]
    assert await store.read(["usd"]) == [P53 + 1]
    assert (await store.reserve("r2", [charge("usd", 1, limit)], LEASE, RECORD)).used == [P53]
    assert await store.settle("r2", [("usd", -1)])
    assert await store.read(["usd"]) == [P53]


async def test_sums_around_2_60_are_exact(store: CounterStore) -> None:
    buckets = [("b1", P60 + 1), ("b2", P60 + 3), ("b3", 7)]
    await store.add([(key, value, TTL) for key, value in buckets])
    total = sum(value for _, value in buckets)  # 2^61 + 11: odd, past any double
    admitted = await store.reserve("r1", [Charge("b1", 5, total + 5, TTL,
                                                 ("b1", "b2", "b3"))], LEASE, RECORD)
    assert admitted.admitted and admitted.used == [total]
    refused = await store.reserve("r2", [Charge("b1", 1, total + 5, TTL, ("b1", "b2", "b3"))],
                                  LEASE, RECORD)
    assert not refused.admitted and refused.used == [total + 5]
    assert await store.read(["b1", "b2", "b3"]) == [P60 + 6, P60 + 3, 7]
    assert await store.settle("r1", [("b1", -P60)])  # a settle far below the reserve
    assert await store.read(["b1"]) == [6]
    big = await store.reserve("r3", [charge("c", P60 + 1, P60 + 1)], LEASE, RECORD)
    assert big.admitted
    [expired] = await store.claim_expired(LEASE + 1)
    assert expired.rid == "r3" and expired.deltas == (("c", P60 + 1),)
    assert await store.read(["c"]) == [P60 + 1]


async def test_many_buckets_that_are_each_small_sum_exactly(store: CounterStore) -> None:
    value = 10**15 - 1  # each fits a double; eleven of them (an odd sum past 2^53) do not
    keys = [f"m{i}" for i in range(11)]
    await store.add([(key, value, TTL) for key in keys])
    total = 11 * value
    assert total > P53 and total % 2 == 1
    fits = await store.reserve("r1", [Charge("m0", 1, total + 1, TTL, tuple(keys))],
                               LEASE, RECORD)
    assert fits.admitted and fits.used == [total]
    full = await store.reserve("r2", [Charge("m0", 1, total + 1, TTL, tuple(keys))],
                               LEASE, RECORD)
    assert not full.admitted and full.used == [total + 1]


# --- throttle lanes (pace) ------------------------------------------------------------------

T0 = 1_767_225_600.0


async def test_pace_counts_arrivals_and_freezes_the_rate(store: CounterStore) -> None:
    for i in range(30):  # one arrival every two seconds, under the threshold
        assert (await store.pace("lane", T0 + 2 * i, None, 10.0, 120)).admitted
    now = T0 + 60
    first = await store.pace("lane", now, 1.0, 10.0, 120)
    # 31 arrivals over 60 s, paced at that rate (reduction 1.0): a slot every 60/31 s
    assert first.admitted and first.wait_s == 0.0 and first.queued == 0
    assert first.interval_s == pytest.approx(60 / 31)
    assert first.next_slot == pytest.approx(now + 60 / 31)
    second = await store.pace("lane", now, 1.0, 10.0, 120)
    assert second.wait_s == pytest.approx(60 / 31) and second.queued == 0
    third = await store.pace("lane", now, 1.0, 10.0, 120)
    assert third.wait_s == pytest.approx(120 / 31) and third.queued == 1
    for i in range(50):  # traffic grows while throttled: the frozen pace does not follow
        await store.pace("lane", now + 0.1 * i, 1.0, 1000.0, 120)
    later = await store.pace("lane", now + 5, 1.0, 1000.0, 120)
    assert later.interval_s == pytest.approx(60 / 31)
    # Back under the threshold: the pace is forgotten, the arrivals are not.
    released = await store.pace("lane", now + 6, None, 10.0, 120)
    assert released.admitted and released.interval_s == 0.0 and released.wait_s == 0.0
    again = await store.pace("lane", now + 6, 1.0, 10.0, 120)
    assert again.wait_s == 0.0
    # the rate is observed afresh: the arrivals of the last minute (T0 + 6 on: 27 under the
    # threshold, 3 + 50 + 1 throttled, 2 now) over 60 s
    assert again.interval_s == pytest.approx(60 / 83)
    assert (await store.pace("other", now, 1.0, 10.0, 120)).interval_s == 1.0  # its own lane


async def test_pace_refuses_past_the_max_wait_without_taking_a_slot(
        store: CounterStore) -> None:
    for i in range(60):
        await store.pace("lane", T0 + i, None, 3.0, 120)
    now = T0 + 60
    assert (await store.pace("lane", now, 0.25, 3.0, 120)).wait_s == 0.0  # a slot every ~4 s
    refused = await store.pace("lane", now, 0.25, 3.0, 120)
    assert not refused.admitted and refused.wait_s == pytest.approx(4 * 60 / 61)
    assert refused.next_slot == pytest.approx(now + 4 * 60 / 61)
    # the refusal took nothing: once the slot is due it is free
    assert (await store.pace("lane", now + 4, 0.25, 3.0, 120)).wait_s == 0.0
    # A negative max wait only counts the arrival (a process whose own queue is full).
    full = await store.pace("lane", now + 20, 0.25, -1.0, 120)
    assert not full.admitted and full.wait_s == 0.0


async def test_an_idle_lane_expires(store: CounterStore, backend: Backend) -> None:
    for i in range(10):
        await store.pace("lane", T0 + i / 10, None, 10.0, 5)
    assert (await store.pace("lane", T0 + 1, 0.5, 10.0, 5)).interval_s == pytest.approx(2 / 11)
    if backend.name.startswith("redis"):  # Redis expires keys by its own clock
        with backend.redis() as client:
            key = f"{{{backend.tag}}}:p:lane"
            assert 0 < client.pttl(key) <= 5000
            client.delete(key)
    else:
        backend.clock.advance(5.001)
    fresh = await store.pace("lane", T0 + 7, 0.5, 10.0, 5)
    assert fresh.interval_s == 2.0  # one arrival observed: 1/s, halved


def _process_pace(url: str, n: int, now: float, at: float) -> list[float]:
    """In a child process: ``n`` concurrent throttled calls at ``now``; the waits admitted."""

    async def run() -> list[float]:
        store = counter_store_from_url(url)
        await asyncio.sleep(max(0.0, at - time.time()))
        outcomes = await asyncio.gather(*(store.pace("lane", now, 1.0, 50.0, 120)
                                          for _ in range(n)))
        await store.close()
        return [o.wait_s for o in outcomes if o.admitted]

    return asyncio.run(run())


@pytest.mark.timeout(60)
async def test_pace_gives_each_slot_once_across_processes(shared_backend: Backend) -> None:
    url = shared_backend.url
    if url.startswith("redis"):
        url += "&socket_connect_timeout=5&socket_timeout=5&timeout=5"
    store = counter_store_from_url(url)
    for i in range(60):
        await store.pace("lane", T0 + i, None, 10.0, 120)
    now = T0 + 60
    assert (await store.pace("lane", now, 1.0, 10.0, 120)).wait_s == 0.0  # a slot every 60/61 s
    await store.close()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        pool.starmap(_warm_up, [()] * 3)
        at = time.time() + 0.3
        waits = await asyncio.to_thread(lambda: pool.starmap_async(
            _process_pace, [(url, 30, now, at)] * 3).get(timeout=30))
    admitted = sorted(w for process in waits for w in process)
    # 90 calls, 50 slots within the 50 s allowed: each given out once, in order
    assert admitted == pytest.approx([k * 60 / 61 for k in range(1, 51)])


# --- outages and configuration ------------------------------------------------------------


async def test_closed_store_is_unavailable(backend: Backend) -> None:
    store = backend.make()
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.reserve("r1", [charge("k", 1, 10)], LEASE, RECORD)


async def test_unreachable_redis_fails_fast() -> None:
    store = counter_store_from_url(
        "redis://127.0.0.1:1/0?socket_connect_timeout=0.2&socket_timeout=0.2&timeout=0.2"
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.reserve("r1", [charge("k", 1, 10)], LEASE, RECORD)
    with pytest.raises(StoreUnavailable):
        await store.ping()
    assert time.monotonic() - started < 2
    await store.close()


async def test_unwritable_sqlite_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = counter_store_from_url(f"sqlite:///{blocker}/counters.db")
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.close()


async def test_sqlite_busy_lock_times_out(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "c.db"
    store = counter_store_from_url(f"sqlite:///{path}?busy_timeout=100")
    await store.ping()
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.reserve("r1", [charge("k", 1, 10)], LEASE, RECORD)
        assert time.monotonic() - started < 1.5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await store.reserve("r1", [charge("k", 1, 10)], LEASE, RECORD)).admitted
    await store.close()


async def test_sqlite_file_is_shared_in_wal_mode(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path}/nested/dir/c.db"
    one, two = counter_store_from_url(url), counter_store_from_url(url)
    assert (await one.reserve("r1", [charge("k", 6, 10)], LEASE, RECORD)).admitted
    assert not (await two.reserve("r2", [charge("k", 6, 10)], LEASE, RECORD)).admitted
    assert await two.settle("r1", [("k", -6)])
    assert await one.read(["k"]) == [0]
    await one.close()
    await two.close()
    with sqlite3.connect(str(tmp_path / "nested/dir/c.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/x",
        "counters.db",
        "memory://x",
        "memory://?size=3",
        "sqlite://relative.db",
        "sqlite:///:memory:",
        "sqlite:///x.db?mode=memory",
        "sqlite:///x.db?journal=off",
        "sqlite:///x.db?busy_timeout=-1",
        "redis://127.0.0.1:6379/0?prefix={a}",
        "redis://127.0.0.1:6379/0?colour=blue",
        "redis://:secret@127.0.0.1:6379/0?socket_timeout=abc",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(StoreConfigError) as info:
        counter_store_from_url(url)
    assert "secret" not in str(info.value)


def test_plan_reservation() -> None:
    plan = plan_reservation(
        [charge("a", 2, 10), charge("b", 3, None, "b", "old"), charge("a", 1, 5, ttl=7200)]
    )
    assert plan.keys == ("a", "b", "old")
    assert plan.writes == ((3, 7200), (3, TTL))
    assert [(c.limit, c.sums, c.added) for c in plan.checks] == [
        (10, (0,), 3),
        (None, (1, 2), 3),
        (5, (0,), 3),
    ]
    assert plan.evaluate([2, 0, 4]) == ([2, 4, 2], [])
    assert plan.evaluate([3, 0, 4]) == ([3, 4, 3], [2])


# --- rollover and proration (limits/allowance.py) -----------------------------------------

T0 = 1_767_225_600.0  # a window [T0, T0 + 1000)


def varying(key: str, amount: int, limit: int | None, *, now: float = T0 + 500,
            prorate: bool = False, carry: int = 0) -> Charge:
    rule = Allowance(seen=f"{key}:seen", start=T0, end=T0 + 1000, now=now, prorate=prorate,
                     previous=f"{key}:before" if carry else None, previous_start=T0 - 1000,
                     carry_cap=carry)
    return Charge(key, amount, limit, TTL, (), rule)


async def test_a_prorated_budget_allows_the_share_of_its_first_window_left(
        store: CounterStore, backend: Backend) -> None:
    first = await store.reserve("r1", [varying("c", 300, 1000, prorate=True)], LEASE, RECORD)
    assert first.admitted and first.limits == [500]  # first seen halfway through
    assert await store.read(["c:seen"]) == [int(T0 + 500)]
    later = varying("c", 300, 1000, prorate=True, now=T0 + 900)
    refused = await store.reserve("r2", [later], LEASE, RECORD)
    assert not refused.admitted and refused.limits == [500] and refused.used == [300]
    assert await store.read(["c:seen"]) == [int(T0 + 500)]  # first seen stays first seen
    ttl = backend.ttl("c:seen")
    assert ttl is not None and SEEN_TTL_S - 5 < ttl <= SEEN_TTL_S
    # A budget refused on its very first call is seen from then on, too.
    await store.reserve("r3", [varying("d", 900, 1000, prorate=True)], LEASE, RECORD)
    assert await store.read(["d", "d:seen"]) == [0, int(T0 + 500)]


async def test_a_rolled_over_budget_carries_what_its_previous_window_left(
        store: CounterStore) -> None:
    await store.add([("c:before", 200, TTL), ("c:seen", int(T0 - 5000), TTL)])
    outcome = await store.reserve("r1", [varying("c", 1500, 1000, carry=500)], LEASE, RECORD)
    assert outcome.admitted and outcome.limits == [1500]
    refused = await store.reserve("r2", [varying("c", 1, 1000, carry=500)], LEASE, RECORD)
    assert not refused.admitted and refused.failed == [0]
    # New this window (no marker, no usage yet): nothing to carry.
    await store.add([("n:before", 0, TTL)])
    fresh = await store.reserve("r3", [varying("n", 1, 1000, carry=500)], LEASE, RECORD)
    assert fresh.limits == [1000]
    # Usage but no marker (rollover switched on mid-window): seen since the window's start.
    await store.add([("u", 10, TTL)])
    switched = await store.reserve("r4", [varying("u", 1, 1000, prorate=True)], LEASE,
                                   RECORD)
    assert switched.limits == [1000] and await store.read(["u:seen"]) == [int(T0)]


async def test_every_backend_works_out_the_same_caps(store: CounterStore) -> None:
    """The Redis script mirrors the Python arithmetic: both hold every charge to the same
    cap, to the unit, over amounts up to 10^15 (a million dollars in nano-USD)."""
    rng = random.Random(11)
    for case in range(40):
        amount = rng.choice([rng.randint(1, 10_000), rng.randint(1, 10**15)])
        seen = rng.choice([0, int(T0 - rng.randint(1, 1500)), int(T0 + rng.randint(0, 999))])
        before = rng.randint(0, amount)
        now = T0 + rng.uniform(0, 999.9)
        key = f"case{case}"
        rule = Allowance(seen=f"{key}:seen", start=T0, end=T0 + 1000, now=now,
                         prorate=rng.random() < 0.5, previous=f"{key}:before",
                         previous_start=T0 - 1000, carry_cap=rng.randint(1, amount))
        await store.add([(f"{key}:before", before, TTL)] +
                        ([(f"{key}:seen", seen, TTL)] if seen else []))
        outcome = await store.reserve(key, [Charge(key, 0, amount, TTL, (), rule)], LEASE,
                                      RECORD)
        want = window_amount(amount, first_seen(seen, now, T0, 0), rule, before)
        assert outcome.limits == [want], (case, amount, seen, before, now)


async def test_caps_past_2_53_agree_on_every_backend_and_hold_to_the_unit(
        store: CounterStore) -> None:
    """Rolled over and prorated budgets past 2^53 (up to 2^61 nano-USD, about 2.3 billion
    USD): the Redis script works out the cap Python does, and holds charges to it exactly."""
    rng = random.Random(53)
    for case in range(12):
        amount = rng.choice([P53 + rng.randint(1, 10**6), P60 + 2 * rng.randint(0, 10**9) + 1,
                             rng.randint(P53, 2**61)])
        seen = rng.choice([0, int(T0 - rng.randint(1, 1500)), int(T0 + rng.randint(1, 999))])
        before = rng.randint(0, amount)
        now = T0 + rng.uniform(1, 999.9)
        key = f"big{case}"
        rule = Allowance(seen=f"{key}:seen", start=T0, end=T0 + 1000, now=now,
                         prorate=case % 3 != 2, previous=f"{key}:before",
                         previous_start=T0 - 1000, carry_cap=rng.randint(1, amount))
        await store.add([(f"{key}:before", before, TTL)] +
                        ([(f"{key}:seen", seen, TTL)] if seen else []))
        probe = await store.reserve(key, [Charge(key, 0, amount, TTL, (), rule)], LEASE,
                                    RECORD)
        want = window_amount(amount, first_seen(seen, now, T0, 0), rule, before)
        assert probe.limits == [want], (case, amount, seen, before, now)
        full = await store.reserve(f"{key}:full", [Charge(key, want, amount, TTL, (), rule)],
                                   LEASE, RECORD)
        assert full.admitted and full.limits == [want]
        over = await store.reserve(f"{key}:over", [Charge(key, 1, amount, TTL, (), rule)],
                                   LEASE, RECORD)
        assert not over.admitted and over.used == [want] and over.limits == [want]


# --- Redis specifics ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_keys_share_one_hash_tag(store: CounterStore, backend: Backend) -> None:
    await store.reserve("r1", [charge("k", 1, 10), charge("j", 1, None, "j", "i")], LEASE, b"")
    with backend.redis() as client:
        keys = sorted(k.decode() for k in client.scan_iter(match=f"{{{backend.tag}}}:*"))
    tag = f"{{{backend.tag}}}"
    assert keys == [f"{tag}:c:j", f"{tag}:c:k", f"{tag}:l", f"{tag}:r"]
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one Redis Cluster slot


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_reloads_a_missing_script(store: CounterStore, backend: Backend) -> None:
    assert isinstance(store, RedisCounterStore)
    # As after SCRIPT FLUSH (not run here: the server is shared): the cached sha is unknown.
    store._reserve.sha = "0" * 40
    assert (await store.reserve("r1", [charge("k", 1, 10)], LEASE, RECORD)).admitted
    assert store._reserve.sha != "0" * 40
