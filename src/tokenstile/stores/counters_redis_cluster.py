"""``redis+cluster://host:port[,host:port…]``: counters on a Redis Cluster, spread over its
shards by tenant.

The same Lua scripts as on one server (``counters_redis``), with one constraint: in a
cluster, every key one script touches must be in one hash slot, so the slot is chosen by
a hash tag, and the tag must be the same for every key of one admission and for every
admission that touches a given counter (see ``stores/shards.py`` for why the unit is the
tenant, and what it costs).

Keys, for the tag ``{ts}`` (``?prefix=name`` for ``{name}``):

- ``shard=none`` (the default): every counter under ``{ts}``, as on one server: one slot,
  one shard, any limits.
- ``shard=organization``: the admission names the tenant in its keys (``@acme/…``), and
  the tenant's counters, held reservations and leases live under ``{ts:acme}``
  (``{ts:acme}:c:<counter>``, ``{ts:acme}:r``, ``{ts:acme}:l``); tenants land on
  different slots, so on different shards. ``{ts}:tenants`` lists the tenants seen, so
  that ``claim_expired`` finds every lease set.

A reservation's tenant is found from its keys; the few calls that name only a
reservation id (``renew``, a settle with no keys) use the tenant this process reserved it
under, else look for it in every tenant's hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from tokenstile.clock import Clock
from tokenstile.stores.counters import ExpiredReservation
from tokenstile.stores.counters_redis import RedisCounterStore, _hash_tag
from tokenstile.stores.shards import _escape, shard_mode, split


class RedisClusterCounterStore(RedisCounterStore):
    own_options = frozenset({"shard"})

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.shard_by = shard_mode(url)
        super().__init__(url, clock=clock)
        if self.shard_by == "none":
            self.shard_by = None
        self._tenants_key = f"{_hash_tag(self._prefix)}:tenants"
        self._known: set[str] = set()  # tenants this process has listed in _tenants_key
        self._rids: dict[str, str | None] = {}  # live reservations: rid -> tenant

    def _tag(self, tenant: str | None) -> str:
        if tenant is None:
            return _hash_tag(self._prefix)
        return _hash_tag(f"{self._prefix}:{_escape(tenant)}")

    def _name(self, key: str) -> str:
        tenant, bare = split(key)
        return f"{self._tag(tenant)}:c:{bare}"

    def _tenant(self, keys: Sequence[str]) -> str | None:
        tenants = {split(key)[0] for key in keys}
        if len(tenants) > 1:
            raise ValueError("keys of one call belong to several tenants: "
                             f"{sorted(map(str, tenants))}")
        return next(iter(tenants), None)

    def _layout(self, rid: str, keys: Sequence[str]) -> tuple[str, str, list[str]]:
        tenant = self._tenant(keys) if keys else self._rids.get(rid)
        tag = self._tag(tenant)
        return f"{tag}:r", f"{tag}:l", [self._name(k) for k in keys]

    async def _reserve_layout(self, rid: str, keys: Sequence[str]) -> tuple[str, str, list[str]]:
        tenant = self._tenant(keys) if keys else None
        if tenant is not None and tenant not in self._known:
            await self._call("reserve", lambda: self._client.sadd(self._tenants_key, tenant))
            self._known.add(tenant)
        self._rids[rid] = tenant
        return self._layout(rid, keys)

    async def _settle_layout(self, rid: str, keys: Sequence[str]) -> tuple[str, str, list[str]]:
        if not keys and rid not in self._rids:
            self._rids[rid] = await self._find(rid)
        return self._layout(rid, keys)

    def _forget(self, rid: str) -> None:
        self._rids.pop(rid, None)

    async def _tenants(self) -> list[str | None]:
        listed = await self._call("claim", lambda: self._client.smembers(self._tenants_key))
        return [None, *sorted(t.decode() if isinstance(t, bytes) else str(t) for t in listed)]

    async def _find(self, rid: str) -> str | None:
        """The tenant holding ``rid`` (None when no tenant does, or it is the shared one)."""
        for tenant in await self._tenants():
            held = f"{self._tag(tenant)}:r"
            if await self._call("settle", partial(self._client.hexists, held, rid)):
                return tenant
        return None

    async def renew(self, rids: Sequence[str], lease_until: float) -> None:
        by_tenant: dict[str | None, list[str]] = {}
        for rid in rids:
            if rid in self._rids:
                by_tenant.setdefault(self._rids[rid], []).append(rid)
        for tenant, items in by_tenant.items():
            lease = f"{self._tag(tenant)}:l"
            mapping = dict.fromkeys(items, lease_until)
            await self._call("renew", partial(self._client.zadd, lease, mapping, xx=True,
                                              gt=True))

    async def claim_expired(self, now: float, limit: int = 100) -> list[ExpiredReservation]:
        out: list[ExpiredReservation] = []
        for tenant in await self._tenants():
            if len(out) >= limit:
                break
            tag = self._tag(tenant)
            out += await self._claim_from(f"{tag}:r", f"{tag}:l", now, limit - len(out))
        return out

    async def add(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        by_tenant: dict[str | None, list[tuple[str, int, int]]] = {}
        for item in deltas:
            by_tenant.setdefault(split(item[0])[0], []).append(item)
        for items in by_tenant.values():
            await super().add(items)

    async def read(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        names = [self._name(k) for k in keys]
        values = await self._call("read", lambda: self._client.mget_nonatomic(names))
        return [0 if v is None else int(v) for v in values]
