"""The stated outage mode of the counter store, on a Redis of the test's own that is killed,
paused and restarted under the gateway: each limit fails closed (503 ``store_unavailable``)
or open (admitted, flagged ``unmetered``) as configured, no call waits longer than the
store's timeouts, ``/readyz`` and ``tokenstile_store_errors`` show it, and the gateway
recovers by itself when Redis is back, with its counters exact."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.chaos.procs import Blackhole, RedisServer
from tests.conftest import FakeHandle, Gateway
from tests.tcp_proxy import proxy_in_thread
from tokenstile.limits.counter_keys import counter_key
from tokenstile.stores.counters_redis import RedisCounterStore

CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.close()


def outage_config(counters_url: str, fake: FakeHandle, lease_s: float = 3.0
                  ) -> dict[str, Any]:
    return {
        "upstreams": {"anthropic": {"kind": "anthropic", "base_url": fake.url,
                                    "api_key": "sk-ant-upstream"}},
        "storage": {"counters": counters_url},
        "server": {"reservation_lease_s": lease_s},
        "limits": [
            {"name": "closed-budget", "scope": "project", "match": "closed",
             "window": "day", "unit": "tokens", "amount": 1_000_000},
            {"name": "open-budget", "scope": "project", "match": "open", "window": "day",
             "unit": "tokens", "amount": 1_000_000, "failure_mode": "open"},
        ],
    }


@pytest.fixture
def outage_gateway(make_gateway: Any, redis_server: RedisServer, fake: FakeHandle
                   ) -> Gateway:
    url = redis_server.url(prefix="t" + uuid.uuid4().hex[:8])
    gateway: Gateway = make_gateway(outage_config(url, fake))
    return gateway


async def chat(gateway: Gateway, key: str, content: str = "hello there", *,
               path: str = "/v1/chat/completions", stream: bool = False,
               limit_s: float = 20) -> tuple[int, dict[str, str], Any, float]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 20, "stream": stream,
                            "messages": [{"role": "user", "content": content}]}
    headers = {"authorization": f"Bearer {key}"}
    if path == "/v1/messages":
        body["model"] = "claude-haiku-4-5"
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.post(
            gateway.url + path, json=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=limit_s)) as resp:
        raw = await resp.read()
        payload = None if stream and resp.status == 200 else await resp.json(
            content_type=None)
        return resp.status, dict(resp.headers), payload or raw, time.monotonic() - started


def get_json(gateway: Gateway, path: str) -> Any:
    import urllib.request

    import orjson

    with urllib.request.urlopen(gateway.url + path, timeout=10) as resp:
        return orjson.loads(resp.read())


def metric(gateway: Gateway, name: str) -> float:
    total = 0.0
    for line in gateway.runtime.metrics.render().decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def counter(gateway: Gateway, project: str) -> int:
    rt = gateway.runtime
    [limit] = [lim for lim in rt.admission.limits if lim.name == f"{project}-budget"]
    key, _ = counter_key(limit, project, rt.clock.now())
    return int(gateway.run(rt.counters.read([key]))[0])


def settled(gateway: Gateway, timeout: float = 10) -> None:
    """Wait until nothing waits for the store and no request holds a reservation."""
    admission = gateway.runtime.admission
    deadline = time.monotonic() + timeout
    while admission.leases.unsettled or admission.leases.live:
        assert time.monotonic() < deadline, (admission.leases.unsettled, admission.leases.live)
        time.sleep(0.05)


def tokens_of(rows: list[Any], **match: Any) -> int:
    return sum(r.input_tokens + r.output_tokens for r in rows
               if all(getattr(r, k) == v for k, v in match.items()))


async def until_ok(gateway: Gateway, key: str, limit_s: float = 10) -> float:
    started = time.monotonic()
    while True:
        status, _, _, _ = await chat(gateway, key)
        if status == 200:
            return time.monotonic() - started
        assert status == 503
        assert time.monotonic() - started < limit_s, "no recovery after Redis came back"
        await asyncio.sleep(0.1)


async def test_a_closed_limit_refuses_clearly_and_recovers_without_restart(
        outage_gateway: Gateway, redis_server: RedisServer, fake: FakeHandle) -> None:
    gateway = outage_gateway
    key = gateway.key(project="closed")
    assert (await chat(gateway, key))[0] == 200
    assert get_json(gateway, "/readyz")["status"] == "ready"
    redis_server.kill()

    status, headers, payload, elapsed = await chat(gateway, key)
    assert status == 503 and elapsed < 2.0
    error = payload["error"]
    assert error["code"] == "store_unavailable" and error["type"] == "api_error"
    assert error["message"].startswith("tokenstile: ")
    assert "'closed-budget' fails closed" in error["message"]
    assert "127.0.0.1" not in error["message"]  # no internal addresses in client errors
    assert int(headers["Retry-After"]) >= 1
    assert headers["x-tokenstile-request-id"].startswith("req_")
    # Anthropic's route answers in Anthropic's shape
    status, _, payload, _ = await chat(gateway, key, path="/v1/messages")
    assert status == 503, payload
    assert payload["type"] == "error" and payload["error"]["type"] == "overloaded_error"
    assert payload["error"]["message"].startswith("tokenstile: ")

    ready = get_json(gateway, "/readyz")
    assert ready["status"] == "degraded" and ready["degraded"] == ["counters"]
    assert ready["checks"]["counters"]["status"] == "unavailable"
    assert ready["checks"]["counters"]["store"] == "redis"
    assert metric(gateway, 'tokenstile_store_errors_total{store="counters"}') >= 1

    redis_server.start()  # same port, same data
    await until_ok(gateway, key)
    assert get_json(gateway, "/readyz")["status"] == "ready"
    settled(gateway)
    rows = gateway.rows()
    refused = [r for r in rows if r.status == 503]
    assert len(refused) >= 2
    assert {r.block_reason for r in refused} == {"counter_store_unavailable"}
    assert all(r.input_tokens == r.output_tokens == 0 for r in refused)
    assert fake.fake.tally.requests == sum(1 for r in rows if r.status == 200)
    # the counter holds exactly what the ledger billed
    assert counter(gateway, "closed") == tokens_of(rows, outcome="ok")


async def test_an_open_limit_admits_unmetered_and_counts_it_when_redis_returns(
        outage_gateway: Gateway, redis_server: RedisServer, fake: FakeHandle) -> None:
    gateway = outage_gateway
    key = gateway.key(project="open")
    assert (await chat(gateway, key))[0] == 200
    redis_server.kill()
    for _ in range(3):
        status, _, _, elapsed = await chat(gateway, key)
        assert status == 200 and elapsed < 2.0
    status, _, _, _ = await chat(gateway, key, stream=True)
    assert status == 200
    rows = gateway.rows()
    assert sum("unmetered" in r.flags for r in rows) == 4
    assert gateway.runtime.admission.leases.unsettled  # kept for when the store answers
    redis_server.start()
    settled(gateway)
    # the usage admitted while Redis was away is on the budget now
    assert counter(gateway, "open") == tokens_of(gateway.rows(), outcome="ok")
    assert fake.fake.tally.requests == 5


async def test_a_hung_redis_costs_one_timeout_then_fails_fast(
        outage_gateway: Gateway, redis_server: RedisServer, fake: FakeHandle) -> None:
    gateway = outage_gateway
    key = gateway.key(project="closed")
    assert (await chat(gateway, key))[0] == 200
    settled(gateway)  # so that the next call on the store is a reserve
    redis_server.pause()
    try:
        status, _, payload, elapsed = await chat(gateway, key)
        assert status == 503 and payload["error"]["code"] == "store_unavailable"
        assert elapsed < 7.0  # the store's own guard: no hang
        timings = []
        for _ in range(5):
            status, _, _, elapsed = await chat(gateway, key)
            assert status == 503
            timings.append(elapsed)
        assert max(timings) < 2.0 and min(timings) < 0.5
        ready = get_json(gateway, "/readyz")
        assert ready["status"] == "degraded"
    finally:
        redis_server.resume()
    await until_ok(gateway, key)
    settled(gateway)
    # a reserve that reached the paused server and ran after it woke was released again
    assert counter(gateway, "closed") == tokens_of(gateway.rows(), outcome="ok")
    assert not [r for r in gateway.rows() if r.outcome == "unsettled"]


async def test_a_blackholed_store_is_bounded(make_gateway: Any, fake: FakeHandle) -> None:
    hole = Blackhole()
    try:
        started = time.monotonic()
        gateway: Gateway = make_gateway(outage_config(hole.url(), fake))
        assert time.monotonic() - started < 15
        key = gateway.key(project="closed")
        status, _, payload, elapsed = await chat(gateway, key)
        assert status == 503 and payload["error"]["code"] == "store_unavailable"
        assert elapsed < 7.0
        status, _, _, elapsed = await chat(gateway, gateway.key(project="open"))
        assert status == 200
        started = time.monotonic()
        ready = get_json(gateway, "/readyz")
        assert time.monotonic() - started < 3.0
        assert ready["status"] == "degraded" and ready["degraded"] == ["counters"]
    finally:
        hole.close()


async def test_a_stream_in_flight_keeps_its_lease_through_a_redis_restart(
        make_gateway: Any, redis_server: RedisServer, fake: FakeHandle) -> None:
    # A one-second lease: the outage is longer than the lease, which must still not be
    # claimed (and charged at its estimate) while its request runs and waits to settle.
    url = redis_server.url(prefix="t" + uuid.uuid4().hex[:8])
    gateway: Gateway = make_gateway(outage_config(url, fake, lease_s=1.0))
    key = gateway.key(project="closed")
    task = asyncio.create_task(chat(
        gateway, key, "slow [[fake:chunk_delay_ms=150,output_tokens=12]]", stream=True))
    await asyncio.sleep(0.5)
    redis_server.kill()
    status, _, raw, _ = await task  # finishes while Redis is down: its settle waits
    assert status == 200 and b"[DONE]" in raw
    [row] = gateway.rows()
    assert row.outcome == "ok"
    admission = gateway.runtime.admission
    for _ in range(100):  # settled once its row is written: the settle waits for Redis
        if row.id in admission.leases.unsettled:
            break
        await asyncio.sleep(0.02)
    assert row.id in admission.leases.unsettled and row.id in admission.leases.live
    await asyncio.sleep(1.5)
    redis_server.start()
    settled(gateway)
    await asyncio.sleep(1.0)  # time for a wrong claim to happen, if one would
    rows = gateway.rows()
    assert [r.outcome for r in rows] == ["ok"]
    assert counter(gateway, "closed") == rows[0].input_tokens + rows[0].output_tokens
    record = fake.fake.tally.last
    assert record is not None and record.output_tokens == rows[0].output_tokens


async def test_killing_redis_mid_traffic_leaves_exact_counters(
        outage_gateway: Gateway, redis_server: RedisServer, fake: FakeHandle) -> None:
    gateway = outage_gateway
    keys = [gateway.key(project="closed"), gateway.key(project="open")]

    async def one(i: int) -> tuple[int, Any]:
        await asyncio.sleep(i * 0.01)
        status, _, payload, elapsed = await chat(
            gateway, keys[i % 2], f"n{i} [[fake:delay_ms=30,chunk_delay_ms=20]]",
            stream=i % 3 == 0)
        assert elapsed < 10
        return status, payload

    async def chaos() -> None:
        await asyncio.sleep(0.8)
        redis_server.kill()
        await asyncio.sleep(1.0)
        redis_server.start()

    results, _ = await asyncio.gather(asyncio.gather(*(one(i) for i in range(300))),
                                      chaos())
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses and statuses.count(200) > 100
    for status, payload in results:
        if status == 503:
            assert payload["error"]["code"] == "store_unavailable"
    settled(gateway, timeout=15)
    rows = gateway.rows()
    assert len(rows) == 300
    assert counter(gateway, "closed") == tokens_of(rows, outcome="ok", project="closed")
    assert counter(gateway, "open") == tokens_of(rows, outcome="ok", project="open")
    assert not [r for r in rows if r.outcome == "unsettled"]
    assert fake.fake.tally.requests == statuses.count(200)


async def test_an_idle_gateway_notices_by_itself_that_redis_is_back(
        outage_gateway: Gateway, redis_server: RedisServer, fake: FakeHandle) -> None:
    gateway = outage_gateway
    admission = gateway.runtime.admission
    key = gateway.key(project="closed")
    redis_server.kill()
    assert get_json(gateway, "/readyz")["status"] == "degraded"  # nothing left to settle
    assert admission.health.down_since is not None and not admission.leases.unsettled
    redis_server.start()
    started = time.monotonic()
    while admission.health.down_since is not None:  # no request, no /readyz: upkeep probes
        assert time.monotonic() - started < 5, "the outage never ended"
        await asyncio.sleep(0.05)
    assert (await chat(gateway, key))[0] == 200


async def test_a_settle_whose_reply_is_lost_leaves_exact_counters(
        make_gateway: Any, redis_server: RedisServer, fake: FakeHandle) -> None:
    # A settle runs on the server and its reply is lost with its connection. Sent again, it
    # would find its reservation gone and answer "unknown"; admission would take that for a
    # claim by crash recovery and correct the counters a second time (here 39 tokens
    # counted for 47 used). It fails instead (a store error), is deferred, and the budget
    # ends at what the ledger says was used.
    with proxy_in_thread("127.0.0.1", redis_server.port) as proxy:
        gateway: Gateway = make_gateway(outage_config(
            proxy.route(redis_server.url(prefix="t" + uuid.uuid4().hex[:8])), fake))
        key = gateway.key(project="closed")
        admission = gateway.runtime.admission

        async def all_settled() -> None:
            deadline = time.monotonic() + 10
            while admission.leases.unsettled or admission.leases.live:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

        assert (await chat(gateway, key))[0] == 200
        await all_settled()  # the scripts are loaded: the next settle runs on the server
        store = gateway.runtime.counters
        assert isinstance(store, RedisCounterStore)
        proxy.cut_reply_on(store._settle.sha.encode())
        status, _, payload, _ = await chat(gateway, key, "and once more, a longer question")
        assert status == 200, payload
        await all_settled()
        rows = gateway.rows()
        assert [r.outcome for r in rows] == ["ok", "ok"]
        assert counter(gateway, "closed") == tokens_of(rows, project="closed") > 0
        assert metric(gateway, "tokenstile_store_errors") >= 1  # the settle that failed
        assert proxy.connections >= 2
