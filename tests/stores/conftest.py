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
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import asyncpg
import pytest
import redis

from tokenstile.clock import FakeClock
from tokenstile.stores.alerts import AlertHistory, history_from_url
from tokenstile.stores.cache import ResponseCache, response_cache_from_url
from tokenstile.stores.counters import CounterStore, counter_store_from_url
from tokenstile.stores.counters_memory import MemoryCounterStore
from tokenstile.stores.database import Database, database_from_url

REDIS_URL = os.environ.get("TOKENSTILE_TEST_REDIS", "redis://127.0.0.1:6379/15")
PG_ADMIN_URL = os.environ.get("TOKENSTILE_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["memory", "sqlite", "redis"]


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
        return store

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(REDIS_URL, socket_timeout=2)

    def redis_key(self, key: str) -> str:
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
        if self.name == "redis" and self.tag is not None:
            with self.redis() as client:
                keys = list(client.scan_iter(match=f"{{{self.tag}}}:*", count=1000))
                if keys:
                    client.delete(*keys)


def make_backend(name: str, tmp_path: Path) -> Backend:
    clock = FakeClock()
    if name == "memory":
        return Backend(name, "memory://", clock)
    if name == "sqlite":
        path = tmp_path / "counters.db"
        return Backend(name, f"sqlite:///{path}", clock, path=path)
    reason = redis_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    tag = f"test-{uuid.uuid4().hex[:12]}"
    return Backend(name, f"{REDIS_URL}?prefix={tag}", clock, tag=tag)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = make_backend(request.param, tmp_path)
    yield made
    made.cleanup()


@pytest.fixture(params=["sqlite", "redis"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Backends that several OS processes can share."""
    made = make_backend(request.param, tmp_path)
    yield made
    made.cleanup()


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
