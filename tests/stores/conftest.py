"""One suite per store kind, every backend: memory, SQLite (a temporary file), and real Redis
and PostgreSQL servers.

Redis runs on a server other test runs share: each test gets its own key prefix (a hash tag
for counters) in db 15 (override with TOKENSTILE_TEST_REDIS) and deletes only its own keys
afterwards. PostgreSQL is shared too: this run creates its own database
``tokenstile_test_<random>`` (dropped at the end) and gives every test a schema of its own.
Override the server with TOKENSTILE_TEST_POSTGRES (a URL to a database this run may use to
create and drop another one).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import asyncpg
import pytest
import redis
from redis.cluster import RedisCluster

from tokenstile.clock import FakeClock
from tokenstile.limits.allowance import Allowance
from tokenstile.stores.alerts import AlertHistory, history_from_url
from tokenstile.stores.cache import ResponseCache, response_cache_from_url
from tokenstile.stores.counters import (
    Charge,
    CounterStore,
    ExpiredReservation,
    ReserveOutcome,
    counter_store_from_url,
)
from tokenstile.stores.counters_memory import MemoryCounterStore
from tokenstile.stores.database import Database, database_from_url
from tokenstile.stores.pacing import PaceOutcome
from tokenstile.stores.shards import _escape, qualify, split

REDIS_URL = os.environ.get("TOKENSTILE_TEST_REDIS", "redis://127.0.0.1:6379/15")
PG_ADMIN_URL = os.environ.get("TOKENSTILE_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["memory", "sqlite", "redis"]
# On the cluster twice: every counter under one tag (shard=none), and every key of the
# suite kept for one tenant (shard=organization, through ``TenantStore``).
COUNTER_BACKENDS = [*BACKENDS, "redis-cluster", "redis-cluster-tenant"]
TENANT = "acme/{corp}"  # characters a tenant name may have that a hash tag may not


@cache
def redis_unreachable_reason() -> str | None:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_URL} is not reachable ({exc})"
    return None


@dataclass
class Backend:
    """A backend under test plus the means to look behind its interface."""

    name: str
    url: str
    clock: FakeClock
    path: Path | None = None
    tag: str | None = None
    _memory: MemoryCounterStore | None = None

    def make(self) -> CounterStore:
        store = counter_store_from_url(self.url, clock=self.clock)
        if isinstance(store, MemoryCounterStore):
            self._memory = store
        if self.tenant is not None:
            return TenantStore(store, self.tenant)
        return store

    cluster: str | None = None  # the first node, host:port, of a Redis Cluster
    tenant: str | None = None  # keys are kept for this tenant (shard=organization)

    def redis(self) -> redis.Redis | RedisCluster:
        if self.cluster is not None:
            host, _, port = self.cluster.rpartition(":")
            return RedisCluster(host=host, port=int(port), socket_timeout=2)
        return redis.Redis.from_url(REDIS_URL, socket_timeout=2)

    def redis_key(self, key: str) -> str:
        if self.tenant is not None:
            return f"{{{self.tag}:{_escape(self.tenant)}}}:c:{key}"
        return f"{{{self.tag}}}:c:{key}"

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None if it has no expiry or does not exist."""
        if self.name == "memory":
            assert self._memory is not None
            when = self._memory._expires.get(key)
            return None if when is None else when - self.clock.now()
        if self.name == "sqlite":
            with sqlite3.connect(str(self.path)) as conn:
                row = conn.execute("SELECT expires_at FROM counters WHERE key = ?", (key,))
                found = row.fetchone()
            return None if found is None or found[0] is None else found[0] - self.clock.now()
        with self.redis() as client:
            ms = client.pttl(self.redis_key(key))
        return None if ms < 0 else ms / 1000

    def drop(self, key: str) -> None:
        """Make ``key`` vanish, as if it had expired."""
        if self.name == "memory":
            assert self._memory is not None
            self._memory._values.pop(key, None)
            self._memory._expires.pop(key, None)
        elif self.name == "sqlite":
            with sqlite3.connect(str(self.path)) as conn:
                conn.execute("DELETE FROM counters WHERE key = ?", (key,))
        else:
            with self.redis() as client:
                client.delete(self.redis_key(key))

    def cleanup(self) -> None:
        if self.name.startswith("redis") and self.tag is not None:
            with self.redis() as client:
                keys = list(client.scan_iter(match=f"{{{self.tag}*", count=1000))
                for key in keys:  # one at a time: in a cluster they are on several shards
                    client.delete(key)


def make_backend(name: str, tmp_path: Path, cluster: str | None = None) -> Backend:
    clock = FakeClock()
    if name == "memory":
        return Backend(name, "memory://", clock)
    if name == "sqlite":
        path = tmp_path / "counters.db"
        return Backend(name, f"sqlite:///{path}", clock, path=path)
    tag = f"test-{uuid.uuid4().hex[:12]}"
    if name == "redis-cluster":
        assert cluster is not None
        return Backend(name, f"redis+cluster://{cluster}?prefix={tag}", clock, tag=tag,
                       cluster=cluster)
    if name == "redis-cluster-tenant":
        assert cluster is not None
        return Backend(name, f"redis+cluster://{cluster}?prefix={tag}&shard=organization",
                       clock, tag=tag, cluster=cluster, tenant=TENANT)
    reason = redis_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    return Backend(name, f"{REDIS_URL}?prefix={tag}", clock, tag=tag)


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    cluster = request.getfixturevalue("redis_cluster") \
        if request.param.startswith("redis-cluster") else None
    return make_backend(request.param, tmp_path, cluster)


@pytest.fixture(params=COUNTER_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = _backend(request, tmp_path)
    yield made
    made.cleanup()


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Backends that several OS processes can share."""
    made = _backend(request, tmp_path)
    yield made
    made.cleanup()


class TenantStore:
    """A store whose every key is one tenant's, as admission builds them with
    ``shard=organization``; reads and claims answer in the suite's own keys."""

    def __init__(self, store: CounterStore, tenant: str) -> None:
        self.inner = store
        self.tenant = tenant
        self.url = store.url

    def _q(self, key: str) -> str:
        return qualify(self.tenant, key)

    async def reserve(self, rid: str, charges: Sequence[Charge], lease_until: float,
                      record: bytes) -> ReserveOutcome:
        return await self.inner.reserve(rid, [
            Charge(self._q(c.key), c.amount, c.limit, c.ttl,
                   tuple(self._q(k) for k in c.window_keys), self._rule(c.allowance))
            for c in charges], lease_until, record)

    def _rule(self, rule: Allowance | None) -> Allowance | None:
        if rule is None:
            return None
        return replace(rule, seen=self._q(rule.seen),
                       previous=None if rule.previous is None else self._q(rule.previous))

    async def settle(self, rid: str, deltas: Sequence[tuple[str, int]]) -> bool:
        return await self.inner.settle(rid, [(self._q(k), d) for k, d in deltas])

    async def renew(self, rids: Sequence[str], lease_until: float) -> None:
        await self.inner.renew(rids, lease_until)

    async def claim_expired(self, now: float, limit: int = 100) -> list[ExpiredReservation]:
        return [ExpiredReservation(e.rid, e.record, tuple((split(k)[1], a) for k, a in e.deltas))
                for e in await self.inner.claim_expired(now, limit)]

    async def add(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        await self.inner.add([(self._q(k), a, t) for k, a, t in deltas])

    async def read(self, keys: Sequence[str]) -> list[int]:
        return await self.inner.read([self._q(k) for k in keys])

    async def pace(self, lane: str, now: float, reduction: float | None, max_wait_s: float,
                   ttl: int) -> PaceOutcome:
        return await self.inner.pace(lane, now, reduction, max_wait_s, ttl)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


# --- a Redis Cluster of three primaries, started for this run -------------------------------


def _free_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait(check: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test Redis Cluster did not {what} in {timeout:g}s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three cluster-enabled ``redis-server`` processes on free ports (no replicas, no
    persistence) joined by ``redis-cli --cluster create``; stopped at the end of the run.
    Yields the first node's ``host:port``."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server and redis-cli are needed for the Redis Cluster tests")
    workdir = tmp_path_factory.mktemp("redis-cluster")
    ports = [_free_port() for _ in range(3)]
    while len(set(ports)) < 3:
        ports = [_free_port() for _ in range(3)]
    procs = [subprocess.Popen(
        [server, "--cluster-enabled", "yes", "--port", str(port), "--bind", "127.0.0.1",
         "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", str(workdir), "--logfile", f"{workdir}/{port}.log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in ports]
    nodes = [redis.Redis(port=port, socket_timeout=1) for port in ports]
    try:
        for node in nodes:
            _wait(node.ping, "start")
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        for node in nodes:
            _wait(lambda node=node: node.cluster("info")["cluster_state"] == "ok",  # type: ignore[misc]
                  "agree on its slots")
        yield f"127.0.0.1:{ports[0]}"
    finally:
        for node in nodes:
            node.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[CounterStore]:
    made = backend.make()
    yield made
    await made.close()


# --- response cache ---------------------------------------------------------------------------


@dataclass
class CacheBackend:
    """A response cache backend under test plus the means to look behind its interface."""

    name: str
    url: str
    clock: FakeClock
    prefix: str | None = None

    def make(self) -> ResponseCache:
        return response_cache_from_url(self.url, clock=self.clock)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(REDIS_URL, socket_timeout=2)

    def expire(self, key: str, ttl_s: float) -> None:
        """Let ``key`` (stored for ``ttl_s``) run out: move the clock, or, in Redis (which
        keeps its own time), check the expiry it was given and then drop it."""
        if self.name != "redis":
            self.clock.advance(ttl_s + 0.001)
            return
        with self.redis() as client:
            remaining = client.pttl(f"{self.prefix}:{key}")
            assert 0 < remaining <= ttl_s * 1000
            client.delete(f"{self.prefix}:{key}")

    def cleanup(self) -> None:
        if self.name == "redis" and self.prefix is not None:
            with self.redis() as client:
                keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
                if keys:
                    client.delete(*keys)


def make_cache_backend(name: str, tmp_path: Path) -> CacheBackend:
    clock = FakeClock()
    if name == "memory":
        return CacheBackend(name, "memory://", clock)
    if name == "sqlite":
        return CacheBackend(name, f"sqlite:///{tmp_path}/cache.db", clock)
    reason = redis_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    prefix = f"tstest-cache-{uuid.uuid4().hex[:12]}"
    return CacheBackend(name, f"{REDIS_URL}?prefix={prefix}", clock, prefix=prefix)


@pytest.fixture(params=BACKENDS)
def cache_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheBackend]:
    made = make_cache_backend(request.param, tmp_path)
    yield made
    made.cleanup()


@pytest.fixture
async def cache_store(cache_backend: CacheBackend) -> AsyncIterator[ResponseCache]:
    made = cache_backend.make()
    yield made
    await made.close()


# --- PostgreSQL ---------------------------------------------------------------------------------


@cache
def pg_unreachable_reason() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=2)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc})"
    return None


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this test run's own, dropped at the end."""
    reason = pg_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    name = f"tokenstile_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield _with_database(PG_ADMIN_URL, name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A fresh schema in this run's database."""
    return f"{pg_database}?schema=t_{uuid.uuid4().hex[:12]}"


# --- database -----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    made = database_from_url(db_url)
    await made.open()
    yield made
    await made.close()


# --- alert history ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def history(history_url: str) -> AsyncIterator[AlertHistory]:
    made = history_from_url(history_url)
    await made.open()
    yield made
    await made.close()
