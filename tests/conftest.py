"""Shared fixtures: a fake upstream (real HTTP) and gateways built from small configs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web

from tests.in_process import MakeInProcess, in_process_gateways
from tokenstile.app import TokenstileApp
from tokenstile.clock import Clock, SystemClock
from tokenstile.config import Config, parse_config
from tokenstile.gateway.runtime import Runtime
from tokenstile.stores.database import KeyRecord, hash_key, new_key_id, new_key_secret
from tokenstile.testing.fake_upstream import FakeUpstream
from tokenstile.testing.server_thread import RunningServer
from tokenstile.types import LedgerRow

T = TypeVar("T")


def settled(read: Callable[[], T], ready: Callable[[T], bool], limit_s: float = 5.0) -> T:
    """``read()`` once ``ready`` holds for it (or its last value after ``limit_s``): a
    request's row, settle, logs and span land just after its last byte has been sent, so
    the client may see the answer first."""
    deadline = time.monotonic() + limit_s
    while True:
        value = read()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"


class FakeHandle:
    def __init__(self, fake: FakeUpstream, url: str) -> None:
        self.fake = fake
        self.url = url
        self.v1 = url + "/v1"


def _freeze_long_lived_heap() -> None:
    """Load the big, permanent tables (tokenizers, prices) and move everything alive now out
    of the collector's sight, so the per-test collection below scans only new objects."""
    import gc

    from tokenstile.gateway.runtime import warm_up

    warm_up()
    gc.collect()
    gc.freeze()


_freeze_long_lived_heap()


@pytest.fixture(autouse=True)
def collect_sdk_clients() -> Iterator[None]:
    """SDK clients a test forgot to close are collected at its own teardown, so their
    unclosed sockets are not reported in whichever later test the collector runs."""
    yield
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeHandle]:
    with served_fake() as handle:
        yield handle


@contextlib.contextmanager
def served_fake(**overrides: Any) -> Iterator[FakeHandle]:
    """A fake upstream served on a free port for the ``with`` block; ``overrides`` are its
    settings (``defaults={...}``: how it answers every request unless told otherwise)."""
    fake = FakeUpstream(**overrides)
    with fake.serve() as server:
        yield FakeHandle(fake, server.url)


@pytest.fixture
def fake(fake_server: FakeHandle) -> FakeHandle:
    fake_server.fake.reset()
    return fake_server


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def gateway_config(fake: FakeHandle, tmp_path: Path, index: int, extra: dict[str, Any], *,
                anthropic: bool = False) -> dict[str, Any]:
    """A test gateway's configuration: the fake as its OpenAI upstream (and, with
    ``anthropic``, as its Anthropic one), memory counters, the ``index``-th SQLite database
    under ``tmp_path``; ``extra`` merged over it."""
    upstreams = {"openai": {"kind": "openai", "base_url": fake.v1, "api_key": UPSTREAM_KEY}}
    if anthropic:
        upstreams["anthropic"] = {"kind": "anthropic", "base_url": fake.url,
                                  "api_key": UPSTREAM_KEY}
    base = {"upstreams": upstreams,
            "storage": {"counters": "memory://",
                        "database": f"sqlite:///{tmp_path}/ts-{index}.db"}}
    return deep_merge(base, extra)


class Gateway:
    """A real gateway on a free port, its runtime reachable from the test thread."""

    def __init__(self, config: dict[str, Any] | Config, clock: Clock | None = None) -> None:
        self.config = config if isinstance(config, Config) else \
            parse_config(config, "<test>", env={})
        self.runtime = Runtime.build(self.config, clock=clock or SystemClock())
        self.app = TokenstileApp(self.runtime)
        self.server = RunningServer(self.app)
        self.url = self.server.start()
        self.v1 = self.url + "/v1"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self.runtime.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.runtime.loop).result(timeout)

    def key(self, project: str = "demo", user: str | None = "alice", **fields: Any) -> str:
        secret = new_key_secret()
        record = KeyRecord(id=new_key_id(), hash=hash_key(secret), prefix=secret[:7],
                           organization=fields.pop("organization", "default"),
                           project=project, user=user, created_at=0.0, **fields)
        self.run(self.runtime.db.create_key(record))
        return secret

    def rows(self, **filters: Any) -> list[LedgerRow]:
        self.run(self.runtime.ledger.flush())
        rows = self.run(self.runtime.db.ledger_rows(limit=10_000, **filters))
        return list(reversed(rows))

    def settle_wait(self, within_s: float = 5.0) -> None:
        """Until every reservation of this gateway is settled (its counters moved to what
        was used) or ``within_s`` passed: a request's settle follows the write of its row,
        after the client has its answer."""
        live = self.runtime.admission.leases.live
        deadline = time.monotonic() + within_s
        while live and time.monotonic() < deadline:
            time.sleep(0.01)

    def settled_counter(self, limit_name: str, scope_id: str) -> int:
        """The counter the limit named ``limit_name`` charges for ``scope_id`` now, once
        every reservation of this gateway is settled (``settle_wait``)."""
        from tokenstile.limits.counter_keys import counter_key

        runtime = self.runtime
        [limit] = [lim for lim in runtime.admission.limits if lim.name == limit_name]
        key, _ = counter_key(limit, scope_id, runtime.clock.now())
        self.settle_wait()
        [value] = self.run(runtime.counters.read([key]))
        return int(value)

    def rows_once_written(self, count: int, within_s: float = 5.0) -> list[LedgerRow]:
        """The ledger rows once there are ``count`` of them (a request the client saw end,
        by an error event say, is settled and written just after), oldest first."""
        deadline = time.monotonic() + within_s
        rows = self.rows()
        while len(rows) < count and time.monotonic() < deadline:
            time.sleep(0.02)
            rows = self.rows()
        return rows

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def make_gateway(fake: FakeHandle, tmp_path: Path) -> Iterator[Any]:
    started: list[Gateway] = []

    def make(extra: dict[str, Any] | Config | None = None,
             clock: Clock | None = None) -> Gateway:
        if isinstance(extra, Config):
            gateway = Gateway(extra, clock=clock)
            started.append(gateway)
            return gateway
        gateway = Gateway(gateway_config(fake, tmp_path, len(started), extra or {}), clock=clock)
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.close()


@pytest.fixture
def gateway(make_gateway: Any) -> Any:
    return make_gateway()


@pytest.fixture
async def in_process(fake: FakeHandle, tmp_path: Path) -> AsyncIterator[MakeInProcess]:
    """``await in_process(extra)``: a gateway in the test's own event loop, on a fake clock,
    with the fake as its OpenAI and Anthropic upstreams."""
    async with in_process_gateways(
            lambda index, extra: gateway_config(fake, tmp_path, index, extra, anthropic=True)
    ) as build:
        yield build


@dataclass
class WebhookReceiver:
    """Records every POST; answers ``fail_next`` requests with 500, then 200."""

    url: str = ""
    bodies: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_next: int = 0
    status: int = 500
    delay_s: float = 0.0
    attempts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=self.status, text="receiver says no")
        self.bodies.append(orjson.loads(await request.read()))
        self.headers.append(dict(request.headers))
        self.arrived.set()
        return web.Response(status=200, text="ok")


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/hooks/{secret}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/hooks/s3cr3t-token"
    yield receiver
    await runner.cleanup()
