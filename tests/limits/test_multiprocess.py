"""Limits hold across processes: gateways sharing Redis, workers sharing SQLite, and a
gateway killed mid-request whose reservation is charged when a gateway starts again."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from tests.conftest import FakeHandle

LIMIT = 3000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """Gateway processes started with ``tokenstile serve`` on one config file."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self.path = directory / "gateway.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "TOKENSTILE_CONFIG": str(self.path)}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "tokenstile", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def key(self, project: str) -> str:
        return str(orjson.loads(self.cli("keys", "create", "--project", project, "--json"))
                   ["key"])

    def start(self, workers: int = 1) -> str:
        return self.start_all(1, workers)[0]

    def start_all(self, count: int, workers: int = 1) -> list[str]:
        """Start ``count`` gateways side by side; return their URLs once all are ready."""
        started = []
        for _ in range(count):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "tokenstile", "serve", "--port",
                                     str(port), "--workers", str(workers)], env=self.env,
                                    stderr=subprocess.DEVNULL)
            self.procs.append(proc)
            started.append((proc, port))
        for proc, port in started:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    assert proc.poll() is None, "the gateway exited at start"
                    assert time.monotonic() < deadline, "the gateway did not start"
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{port}"
            self.wait_ready(url)
            self.urls.append(url)
        return [f"http://127.0.0.1:{port}" for _, port in started]

    @staticmethod
    def wait_ready(url: str) -> None:
        import urllib.request

        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("gateway never became healthy")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def ledger(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.directory / "ledger.db") as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM ledger ORDER BY ts")]


@pytest.fixture
def cluster_config(fake: FakeHandle, tmp_path: Path) -> dict[str, Any]:
    return {
        "upstreams": {"openai": {"base_url": fake.v1, "api_key": "sk-upstream"}},
        "storage": {"database": f"sqlite:///{tmp_path / 'ledger.db'}"},
        "projects": {"tight": {"daily_limit": LIMIT}},
    }


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(config: dict[str, Any]) -> Cluster:
        cluster = Cluster(tmp_path, config)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


async def hammer(urls: list[str], key: str, count: int) -> list[int]:
    body = {"model": "gpt-4o-mini", "max_tokens": 40,
            "messages": [{"role": "user", "content": "hi [[fake:delay_ms=5]]"}]}
    headers = {"authorization": f"Bearer {key}"}

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        stream = i % 3 == 0
        async with session.post(urls[i % len(urls)] + "/v1/chat/completions",
                                json={**body, "stream": stream}, headers=headers) as resp:
            await resp.read()
            return resp.status

    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(one(session, i) for i in range(count)))


def check_no_overshoot(cluster: Cluster, fake: FakeHandle, statuses: list[int]) -> None:
    ok = statuses.count(200)
    assert 0 < ok < len(statuses), statuses
    assert set(statuses) <= {200, 429}
    served = fake.fake.tally.input_tokens + fake.fake.tally.output_tokens
    assert served <= LIMIT, f"the upstream served {served} tokens against a limit of {LIMIT}"
    cluster.stop()  # a clean shutdown writes every pending ledger row
    rows = cluster.ledger()
    billed = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    assert billed == served
    assert sum(1 for r in rows if r["outcome"] == "ok") == ok == fake.fake.tally.requests
    assert sum(1 for r in rows if r["outcome"] == "blocked") == len(statuses) - ok


def test_three_gateways_sharing_redis_never_overshoot(
        make_cluster: Any, cluster_config: dict[str, Any], fake: FakeHandle) -> None:
    prefix = f"test{uuid.uuid4().hex[:10]}"
    cluster_config["storage"]["counters"] = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    cluster = make_cluster(cluster_config)
    key = cluster.key("tight")
    urls = cluster.start_all(3)
    statuses = asyncio.run(hammer(urls, key, 300))
    check_no_overshoot(cluster, fake, statuses)


def test_two_workers_sharing_sqlite_never_overshoot(
        make_cluster: Any, cluster_config: dict[str, Any], fake: FakeHandle,
        tmp_path: Path) -> None:
    cluster_config["storage"]["counters"] = f"sqlite:///{tmp_path / 'counters.db'}"
    cluster = make_cluster(cluster_config)
    key = cluster.key("tight")
    url = cluster.start(workers=2)
    statuses = asyncio.run(hammer([url], key, 300))
    check_no_overshoot(cluster, fake, statuses)


def test_a_killed_gateways_reservation_is_charged_at_its_estimate_on_restart(
        make_cluster: Any, cluster_config: dict[str, Any], fake: FakeHandle,
        tmp_path: Path) -> None:
    cluster_config["storage"]["counters"] = f"sqlite:///{tmp_path / 'counters.db'}"
    cluster_config["server"] = {"reservation_lease_s": 1.0}
    cluster = make_cluster(cluster_config)
    key = cluster.key("tight")
    url = cluster.start()

    async def hang() -> None:
        body = {"model": "gpt-4o-mini", "max_tokens": 100,
                "messages": [{"role": "user", "content": "wait [[fake:hang]]"}]}
        async with aiohttp.ClientSession() as session:
            with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
                async with session.post(url + "/v1/chat/completions", json=body,
                                        headers={"authorization": f"Bearer {key}"},
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    await resp.read()

    async def kill_mid_request() -> None:
        task = asyncio.create_task(hang())
        for _ in range(100):
            if fake.fake.tally.in_flight:
                break
            await asyncio.sleep(0.05)
        assert fake.fake.tally.in_flight == 1
        cluster.procs[0].send_signal(signal.SIGKILL)
        cluster.procs[0].wait(10)
        await task

    asyncio.run(kill_mid_request())
    cluster.procs.clear()
    assert cluster.ledger() == []  # the dead gateway never settled
    time.sleep(1.2)  # let the one-second lease run out
    cluster.start()
    budget = orjson.loads(cluster.cli("budgets", "--json"))
    [project] = [b for b in budget if b["name"] == "projects.tight.daily_limit"]
    cluster.stop()
    [row] = cluster.ledger()
    assert row["outcome"] == "unsettled" and row["estimated"] == 1
    assert "charged_at_estimate" in orjson.loads(row["flags"])
    assert row["output_tokens"] == 100 and row["input_tokens"] > 0
    assert row["project"] == "tight" and row["cost_nano"] > 0
    # the counters keep the estimate: it was charged, not released
    assert project["used"] == row["input_tokens"] + row["output_tokens"]


def test_gateways_sharing_redis_pace_a_throttled_scope_together(
        make_cluster: Any, cluster_config: dict[str, Any], fake: FakeHandle) -> None:
    """Past a ``throttle`` threshold (reduction 0.5) the combined rate of three gateways is
    half the scope's combined normal rate, not the sum of what each process saw.

    The normal rate is set by traffic that moved between gateways: a slow stream through A
    for three seconds, then a burst through B and one through C (28 requests in ~3 s
    together, while B and C alone each saw a burst of 12 in under a second). Then every
    gateway gets a burst of 15: the requests let through reach the upstream at half the
    combined rate, whichever gateway they came through."""
    prefix = f"test{uuid.uuid4().hex[:10]}"
    cluster_config["storage"]["counters"] = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    cluster_config["limits"] = [{
        "name": "paced", "scope": "project", "match": "tight", "window": "day",
        "unit": "requests", "amount": 1000,
        # engaged from the 29th request of the day on
        "thresholds": [{"threshold": 0.0285, "action": "throttle", "reduction": 0.5}]}]
    cluster_config["degradation"] = {"throttle_max_wait_s": 1.0}
    cluster = make_cluster(cluster_config)
    key = cluster.key("tight")
    a, b, c = cluster.start_all(3)
    body = {"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}

    async def run() -> tuple[float, list[tuple[int, float]]]:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            async def one(url: str) -> tuple[int, float]:
                async with session.post(url + "/v1/chat/completions", json=body,
                                        headers=headers) as resp:
                    await resp.read()
                    return resp.status, loop.time()

            start = loop.time()
            slow = []
            for i in range(4):  # one a second through A
                await asyncio.sleep(max(0.0, start + i - loop.time()))
                slow.append(await one(a))
            bursts = await asyncio.gather(*(one(url) for url in [b, c] * 12))
            # under the threshold: nothing paced
            assert [status for status, _ in slow + bursts] == [200] * 28
            span = loop.time() - start
            return span, await asyncio.gather(*(one(url) for url in [a, b, c] * 15))

    served_before = fake.fake.tally.requests
    span, answers = asyncio.run(run())
    assert {status for status, _ in answers} == {200, 429}
    done = sorted(when for status, when in answers if status == 200)
    assert fake.fake.tally.requests - served_before == 28 + len(done)
    # The combined normal rate: at most 29 arrivals (28 + the first throttled one) in the
    # span the client measured. The requests let through were answered one slot apart at
    # half that rate (the fake answers at once; half a second for scheduling jitter: on a
    # loaded machine answers delayed early arrive bunched with later ones).
    interval = 1 / (0.5 * 29 / max(1.0, span - 0.05))
    assert len(done) >= 3
    assert done[-1] - done[0] >= (len(done) - 1) * interval - 0.5, (len(done), span, done)
    # (Each process pacing on its own let about 16 through within one second here.)
