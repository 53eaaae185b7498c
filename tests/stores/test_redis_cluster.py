"""The counter store on a real three-shard Redis Cluster (started by the ``redis_cluster``
fixture): where the keys go, and what a store sharded by tenant does that one server does
not. The whole counter contract runs on the cluster too (``test_counters.py``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.stores.conftest import _free_port
from tokenstile.config import Config
from tokenstile.limits.status import budget_status
from tokenstile.stores.counters import Charge, StoreConfigError, counter_store_from_url
from tokenstile.stores.counters_redis_cluster import RedisClusterCounterStore
from tokenstile.stores.shards import qualify, split, status_tenants

LEASE = 1_000.0


def charge(tenant: str | None, key: str, amount: int, limit: int | None) -> Charge:
    return Charge(qualify(tenant, key), amount, limit, 3600)


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(redis_cluster: str, prefix: str) -> Any:
    host, _, port = redis_cluster.rpartition(":")
    made = RedisCluster(host=host, port=int(port), socket_timeout=2)
    yield made
    for key in list(made.scan_iter(match=f"{{{prefix}*", count=1000)):
        made.delete(key)
    made.close()


@pytest.fixture
async def sharded(redis_cluster: str, prefix: str, client: Any
                  ) -> AsyncIterator[RedisClusterCounterStore]:
    store = counter_store_from_url(f"redis+cluster://{redis_cluster}?prefix={prefix}"
                                   "&shard=organization")
    assert isinstance(store, RedisClusterCounterStore) and store.shard_by == "organization"
    yield store
    await store.close()


def names(client: Any, prefix: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=f"{{{prefix}*", count=1000))


async def test_one_admission_is_one_slot_and_tenants_spread_over_the_shards(
        sharded: RedisClusterCounterStore, client: Any, prefix: str) -> None:
    tenants = [f"org-{i}" for i in range(12)]
    for tenant in tenants:
        # an admission touching several scopes: its key, user, project, organization
        outcome = await sharded.reserve(f"r-{tenant}", [
            charge(tenant, f"organization:{tenant}:usd:month:2026-11", 10, 1000),
            charge(tenant, "project:search:tokens:day:20261120", 100, 10_000),
            charge(tenant, "user:alice:requests:minute:202611201530", 1, 60),
            charge(tenant, "key:key_1:tokens:day:20261120", 100, None)], LEASE, b"{}")
        assert outcome.admitted
    found = names(client, prefix)
    slots: dict[str, set[int]] = {}
    for name in found:
        tag = name[1:name.index("}")]
        slots.setdefault(tag, set()).add(key_slot(name.encode()))
    assert f"{{{prefix}}}:tenants" in found
    per_tenant = {tag: slot for tag, slot in slots.items() if ":" in tag}
    assert len(per_tenant) == len(tenants)
    assert all(len(s) == 1 for s in per_tenant.values())  # counters, hash, lease: one slot
    for tenant in tenants:
        tag = f"{prefix}:{tenant}"
        assert {n for n in found if n.startswith(f"{{{tag}}}")} == {
            f"{{{tag}}}:r", f"{{{tag}}}:l",
            f"{{{tag}}}:c:organization:{tenant}:usd:month:2026-11",
            f"{{{tag}}}:c:project:search:tokens:day:20261120",
            f"{{{tag}}}:c:user:alice:requests:minute:202611201530",
            f"{{{tag}}}:c:key:key_1:tokens:day:20261120"}
    owners = {client.nodes_manager.get_node_from_slot(next(iter(s))).name
              for s in per_tenant.values()}
    assert len(owners) == 3  # twelve tenants over three shards: every shard holds some
    # The same project name in two tenants is two counters, each with its own limit.
    assert await sharded.read([qualify("org-0", "project:search:tokens:day:20261120"),
                               qualify("org-1", "project:search:tokens:day:20261120"),
                               "project:search:tokens:day:20261120"]) == [100, 100, 0]


async def test_a_reservation_cannot_span_tenants(sharded: RedisClusterCounterStore) -> None:
    with pytest.raises(ValueError, match="several tenants"):
        await sharded.reserve("r1", [charge("a", "k", 1, 10), charge("b", "k", 1, 10)],
                              LEASE, b"")


async def test_leases_are_kept_and_claimed_per_tenant(
        sharded: RedisClusterCounterStore, redis_cluster: str, prefix: str) -> None:
    for tenant, lease in (("a", 10.0), ("b", 20.0), (None, 30.0), ("c", 500.0)):
        assert (await sharded.reserve(f"r-{tenant}", [charge(tenant, "tok", 5, 100)],
                                      lease, f"row-{tenant}".encode())).admitted
    await sharded.renew(["r-a", "r-unknown"], 400.0)
    claimed = await sharded.claim_expired(100.0)
    assert sorted((c.rid, c.record) for c in claimed) == [
        ("r-None", b"row-None"), ("r-b", b"row-b")]
    assert {split(k)[0] for c in claimed for k, _ in c.deltas} == {None, "b"}
    assert await sharded.claim_expired(1_000.0, limit=1) != []  # a limit across tenants
    # A settle that names no counter, from a process that did not reserve it, still finds
    # the reservation's tenant.
    other = counter_store_from_url(f"redis+cluster://{redis_cluster}?prefix={prefix}"
                                   "&shard=organization")
    try:
        assert (await sharded.reserve("r-d", [charge("d", "tok", 7, 100)], LEASE,
                                      b"")).admitted
        assert await other.settle("r-d", []) is True
        assert await other.settle("r-d", []) is False
        assert await other.read([qualify("d", "tok")]) == [7]
    finally:
        await other.close()


async def test_adds_and_reads_go_to_each_tenants_shard(
        sharded: RedisClusterCounterStore) -> None:
    keys = [qualify(t, "tok") for t in ("x", "y", "z")] + ["tok"]
    await sharded.add([(k, i + 1, 3600) for i, k in enumerate(keys)])
    assert await sharded.read(keys) == [1, 2, 3, 4]


@pytest.mark.parametrize("url", [
    "redis+cluster://127.0.0.1:7000?shard=project",
    "redis+cluster://127.0.0.1:7000/0?db=1",
    "redis+cluster://127.0.0.1?prefix=x",
    "redis+cluster://127.0.0.1:7000?colour=blue",
    "redis+cluster://127.0.0.1:7000?prefix={x}",
])
def test_bad_cluster_urls(url: str) -> None:
    with pytest.raises(StoreConfigError):
        counter_store_from_url(url)


async def test_an_unreachable_cluster_is_an_outage_not_a_hang() -> None:
    from tokenstile.stores.counters import StoreUnavailable

    store = counter_store_from_url(f"redis+cluster://127.0.0.1:{_free_port()}"
                                   "?socket_connect_timeout=0.2&socket_timeout=0.2")
    with pytest.raises(StoreUnavailable):
        await store.reserve("r1", [charge(None, "k", 1, 10)], LEASE, b"")
    await store.close()


def test_limits_every_tenant_shares_are_refused_with_shard_organization() -> None:
    base = {"storage": {"counters": "redis+cluster://127.0.0.1:7000?shard=organization"}}
    Config.model_validate({**base, "projects": {"search": {"daily_limit": 1000}},
                           "organization": {"daily_budget_usd": 5}})
    for extra in ({"global": {"daily_budget_usd": 50}},
                  {"features": {"chat": {"daily_limit": 10}}},
                  {"limits": [{"scope": "model", "window": "day", "unit": "tokens",
                               "amount": 5}]}):
        with pytest.raises(ValueError, match="shared by every organization"):
            Config.model_validate({**base, **extra})
    # per-request limits keep no counter: they are fine
    Config.model_validate({**base, "features": {"chat": {"max_output": 100}}})
    # on one shard, any limit is fine
    Config.model_validate({"storage": {"counters": "redis+cluster://127.0.0.1:7000"},
                           "global": {"daily_budget_usd": 50}})


def test_a_gateway_on_the_cluster_keeps_each_organizations_budgets(
        make_gateway: Any, redis_cluster: str, prefix: str, client: Any) -> None:
    """Two organizations' keys through the openai SDK: each organization's budget is
    enforced on its own shard, and nothing of one is counted in the other."""
    import openai

    gateway = make_gateway({
        "storage": {"counters": f"redis+cluster://{redis_cluster}?prefix={prefix}"
                                "&shard=organization"},
        "organization": {"daily_cap": 300},
        "projects": {"search": {"daily_limit": 200}},
    })
    keys = {org: gateway.key(project="search", organization=org) for org in ("acme", "globex")}

    def ask(org: str) -> int:
        client = openai.OpenAI(base_url=gateway.v1, api_key=keys[org], max_retries=0)
        try:
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=40, messages=[
                {"role": "user", "content": "hello"}])
            return 200
        except openai.RateLimitError:
            return 429
        finally:
            client.close()

    acme = [ask("acme") for _ in range(12)]
    assert acme.count(200) >= 3 and acme[-1] == 429  # acme's project ran out
    assert ask("globex") == 200  # globex's search project is a counter of its own
    rows = gateway.rows()
    spent = {org: sum(r.input_tokens + r.output_tokens for r in rows if r.organization == org)
             for org in ("acme", "globex")}
    assert 0 < spent["acme"] <= 200 and spent["globex"] > 0
    found = names(client, prefix)
    day = next(n for n in found if n.startswith(f"{{{prefix}:acme}}:c:project:search:"))
    assert int(client.get(day)) == spent["acme"]
    other = day.replace(":acme}", ":globex}")
    assert int(client.get(other)) == spent["globex"]
    assert key_slot(day.encode()) != key_slot(other.encode())
    # The budget views read each organization's counters on its own shard.
    rt = gateway.runtime
    rows_now = gateway.run(budget_status(
        rt.admission.limits, rt.counters, rt.clock.now(),
        {"organization": ["acme", "globex"]},
        tenant=status_tenants(rt.config, rt.admission.shard_by)))
    used = {r.scope_id: r.used for r in rows_now if r.name == "organization.daily_cap"}
    assert used == spent
