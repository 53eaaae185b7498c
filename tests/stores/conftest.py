"""One counter-store suite, every backend: memory, SQLite (a temporary file) and real Redis.

Redis runs on a server other test runs share: each test gets its own hash-tag prefix in db
15 (override with TOKENSTILE_TEST_REDIS) and deletes only its own keys afterwards.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import redis

from tokenstile.clock import FakeClock
from tokenstile.stores.counters import CounterStore, counter_store_from_url
from tokenstile.stores.counters_memory import MemoryCounterStore

REDIS_URL = os.environ.get("TOKENSTILE_TEST_REDIS", "redis://127.0.0.1:6379/15")
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
