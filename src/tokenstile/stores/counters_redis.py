"""``redis://host:port/db``: counters shared by gateways on many machines.

Each operation is one Lua script run by EVALSHA (reserve.lua, settle.lua, claim.lua,
add.lua beside this file), so reserve's check-then-add is atomic on the server and costs one
round trip. Amounts are exact to the unit up to 2^63: counters are 64-bit integers (INCRBY),
every amount crosses into Lua as a decimal string, and reserve.lua sums and compares in two
parts wherever a double could round (past 2^53, about 9 million USD in nano-USD).

Every key carries one hash tag (``{ts}`` by default, ``?prefix=name`` for
``{name}``) so that in Redis Cluster all keys a script touches share a slot:
``{ts}:c:<counter>``, ``{ts}:r`` (rid -> reserved deltas and record), ``{ts}:l``
(rids by lease deadline) and ``{ts}:p:<lane>`` (throttle lanes, pace.lua).

Calls never hang (``stores/redis_client.py``): the pool waits at most ``timeout`` seconds for
a free connection (default 1), sockets time out after ``socket_connect_timeout`` /
``socket_timeout`` (default 1 each), and a guard around every call turns anything slower
into StoreUnavailable. A dropped connection is retried once on a fresh one; that is safe
for a reserve, since a repeated reserve of the same rid is not charged twice. A settle is
not sent again on one server (``run_script(repeatable=False)``): if it ran before its reply
was lost, a second run would answer "unknown", which admission takes for a claim by crash
recovery and corrects for a second time; failed, it is deferred instead. (On a cluster,
redis-py's own retry still sends it again.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import orjson

from tokenstile.clock import Clock
from tokenstile.limits.allowance import SEEN_TTL_S, Allowance
from tokenstile.stores.counters import (
    Charge,
    ExpiredReservation,
    ReserveOutcome,
    StoreConfigError,
    merge_deltas,
    plan_reservation,
)
from tokenstile.stores.pacing import MIN_RATE_PER_S, OBSERVATION_S, PaceOutcome
from tokenstile.stores.redis_client import RedisConnection


@cache
def _script(name: str) -> str:
    return resources.files("tokenstile.stores").joinpath(name).read_text(encoding="utf-8")


def _rule(allowance: tuple[Allowance, int, int] | None) -> Any:
    """A check's allowance as reserve.lua reads it (counter numbers 1-based, 0: none)."""
    if allowance is None:
        return False
    rule, seen, previous = allowance
    return (seen + 1, previous + 1, rule.now, rule.start, rule.end, int(rule.prorate),
            rule.previous_start, str(rule.carry_cap), SEEN_TTL_S * 1000)


def _hash_tag(value: str) -> str:
    if not value or any(ch in value for ch in "{}"):
        raise StoreConfigError(f"prefix must be a non-empty name without braces, got {value!r}")
    return "{" + value + "}"


class RedisCounterStore:
    """Counters in Redis strings, reservations in one hash plus one sorted set."""

    shard_by: str | None = None
    own_options: frozenset[str] = frozenset()

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        # ``clock`` is accepted for a uniform constructor; Redis expires keys by its own clock.
        del clock
        self.url = url
        self._redis = RedisConnection(url, "counter store", wait_s=1.0, slack_s=0.5,
                                      own=self.own_options)
        self._prefix = "ts" if self._redis.prefix is None else self._redis.prefix
        tag = _hash_tag(self._prefix)
        self._counter_prefix = f"{tag}:c:"
        self._held_key = f"{tag}:r"
        self._lease_key = f"{tag}:l"
        self._lane_prefix = f"{tag}:p:"
        self._client = self._redis.client
        self._reserve = self._client.register_script(_script("reserve.lua"))
        self._settle = self._client.register_script(_script("settle.lua"))
        self._claim = self._client.register_script(_script("claim.lua"))
        self._add = self._client.register_script(_script("add.lua"))
        self._pace = self._client.register_script(_script("pace.lua"))

    def _key(self, key: str) -> str:
        return self._counter_prefix + key

    def _layout(self, rid: str, keys: Sequence[str]) -> tuple[str, str, list[str]]:
        """The reservation hash, the lease set and the Redis names of ``keys``, all in the
        one slot a script needs."""
        del rid
        return self._held_key, self._lease_key, [self._key(k) for k in keys]

    async def _call(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        return await self._redis.call(what, op)

    async def reserve(
        self, rid: str, charges: Sequence[Charge], lease_until: float, record: bytes
    ) -> ReserveOutcome:
        plan = plan_reservation(charges)
        payload = orjson.dumps(plan.deltas) + b"\n" + record
        spec = orjson.dumps(
            (
                [(str(amount), str(ttl * 1000)) for amount, ttl in plan.writes],
                [
                    (str(c.limit) if c.limit is not None else False, str(c.added),
                     *(i + 1 for i in c.sums))
                    for c in plan.checks
                ],
                [_rule(c.allowance) for c in plan.checks],
            )
        )
        args = (rid, repr(lease_until), payload, spec)
        held, lease, names = await self._reserve_layout(rid, plan.keys)
        keys = [held, lease, *names]
        reply = await self._redis.run_script("reserve", self._reserve, keys, args)
        status, n = int(reply[0]), len(plan.checks)
        used = [int(v) for v in reply[1 : 1 + n]]
        if status == 2:
            return ReserveOutcome(True, used)
        caps = [None if v is None else int(v) for v in reply[1 + n : 1 + 2 * n]]
        if status == 0:
            self._forget(rid)
            return ReserveOutcome(False, used, [int(v) for v in reply[1 + 2 * n :]], caps)
        return ReserveOutcome(True, used, limits=caps)

    async def _reserve_layout(self, rid: str, keys: Sequence[str]) -> tuple[str, str, list[str]]:
        return self._layout(rid, keys)

    def _forget(self, rid: str) -> None:
        """The reservation ``rid`` is gone (settled, refused, claimed)."""

    async def settle(self, rid: str, deltas: Sequence[tuple[str, int]]) -> bool:
        merged = merge_deltas(deltas)
        held, lease, _ = await self._settle_layout(rid, list(merged))
        changed = {k: d for k, d in merged.items() if d != 0}
        _, _, names = self._layout(rid, list(changed))
        keys = [held, lease, *names]
        # Not sent again after a lost reply: a second run would find the reservation gone
        # and answer "unknown", which the caller takes for a claim by crash recovery and
        # corrects the counters a second time. Failed instead, it is deferred, and a
        # deferred settle that finds its reservation gone changes nothing.
        reply = await self._redis.run_script("settle", self._settle, keys,
                                             [rid, *changed.values()], repeatable=False)
        self._forget(rid)
        return bool(int(reply))

    async def _settle_layout(self, rid: str, keys: Sequence[str]) -> tuple[str, str, list[str]]:
        return self._layout(rid, keys)

    async def renew(self, rids: Sequence[str], lease_until: float) -> None:
        if not rids:
            return
        mapping = dict.fromkeys(rids, lease_until)
        await self._call(
            "renew", lambda: self._client.zadd(self._lease_key, mapping, xx=True, gt=True)
        )

    async def claim_expired(self, now: float, limit: int = 100) -> list[ExpiredReservation]:
        if limit <= 0:
            return []
        return await self._claim_from(self._held_key, self._lease_key, now, limit)

    async def _claim_from(self, held: str, lease: str, now: float,
                          limit: int) -> list[ExpiredReservation]:
        keys = [held, lease]
        reply = await self._call("claim", lambda: self._claim(keys=keys, args=[repr(now), limit]))
        out = []
        for i in range(0, len(reply), 2):
            rid = reply[i].decode() if isinstance(reply[i], bytes) else str(reply[i])
            head, _, record = bytes(reply[i + 1]).partition(b"\n")
            deltas = tuple((str(k), int(a)) for k, a in orjson.loads(head))
            out.append(ExpiredReservation(rid, record, deltas))
            self._forget(rid)
        return out

    async def add(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        if not deltas:
            return
        _, _, keys = self._layout("", [key for key, _, _ in deltas])
        args: list[Any] = []
        for _, amount, ttl in deltas:
            args += (amount, ttl * 1000)
        await self._call("add", lambda: self._add(keys=keys, args=args))

    async def read(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        names = [self._key(k) for k in keys]
        values = await self._call("read", lambda: self._client.mget(names))
        return [0 if v is None else int(v) for v in values]

    async def pace(self, lane: str, now: float, reduction: float | None, max_wait_s: float,
                   ttl: int) -> PaceOutcome:
        keys = [self._lane_prefix + lane]
        args: list[str | int] = [
            repr(now), "" if reduction is None else repr(reduction), repr(max_wait_s),
            max(1, ttl * 1000), repr(OBSERVATION_S), repr(MIN_RATE_PER_S)]
        reply = await self._call("pace", lambda: self._pace(keys=keys, args=args))
        return PaceOutcome(bool(int(reply[0])), float(reply[1]), float(reply[2]),
                           int(reply[3]), float(reply[4]))

    async def ping(self) -> None:
        await self._call("ping", self._client.ping)

    async def close(self) -> None:
        await self._redis.close()
