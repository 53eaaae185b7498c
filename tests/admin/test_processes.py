"""Across real gateway processes (``tokenstile serve``) on one SQLite database: a revoked or
expired key is refused by every process within a second; SIGHUP reloads the file; the admin
API can live on its own address while the public one refuses it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.admin.conftest import ADMIN_KEY, Admin
from tests.conftest import FakeHandle
from tests.limits.test_multiprocess import Cluster, free_port

BODY = {"model": "gpt-4o-mini", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(settings: dict[str, Any]) -> Cluster:
        cluster = Cluster(tmp_path, settings)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def config(fake: FakeHandle, tmp_path: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY, **server},
        "upstreams": {"openai": {"base_url": fake.v1, "api_key": "sk-upstream"}},
        "storage": {"database": f"sqlite:///{tmp_path / 'ledger.db'}",
                    "counters": f"sqlite:///{tmp_path / 'counters.db'}"},
    }


def status(url: str, key: str) -> int:
    resp = requests.post(url + "/v1/chat/completions", json=BODY, timeout=10,
                         headers={"authorization": f"Bearer {key}"})
    return resp.status_code


def refused_everywhere_within(urls: list[str], key: str, seconds: float) -> float:
    start = time.monotonic()
    pending = set(urls)
    while pending:
        pending = {url for url in pending if status(url, key) != 401}
        assert time.monotonic() - start < seconds, f"still accepted by {pending}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_revoked_and_expired_keys_are_refused_by_every_process_within_a_second(
        make_cluster: Any, fake: FakeHandle, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster(config(fake, tmp_path))
    urls = [cluster.start(), cluster.start()]
    admin = Admin(urls[0])
    revoked = admin.call("POST", "/keys", {"project": "p"}, expect=201)
    expiring = admin.call("POST", "/keys", {"project": "p"}, expect=201)
    for url in urls:  # both processes know (and cache) both keys
        assert status(url, revoked["key"]) == 200
        assert status(url, expiring["key"]) == 200
    admin.call("POST", f"/keys/{revoked['id']}/revoke")
    assert refused_everywhere_within(urls, revoked["key"], 1.5) <= 1.5
    Admin(urls[1]).call("PATCH", f"/keys/{expiring['id']}", {"expires_at": time.time()})
    assert refused_everywhere_within(urls, expiring["key"], 1.5) <= 1.5


def test_sighup_reloads_and_the_admin_api_can_have_its_own_address(
        make_cluster: Any, fake: FakeHandle, tmp_path: Path) -> None:
    admin_port = free_port()
    settings = config(fake, tmp_path, admin_port=admin_port)
    settings["organization"] = {"name": "aaaa"}
    cluster: Cluster = make_cluster(settings)
    url = cluster.start()
    public = Admin(url)
    assert public.get("/keys", expect=404)["error"]["code"] == "admin_elsewhere"
    admin = Admin(f"http://127.0.0.1:{admin_port}")
    assert admin.get("/config")["config"]["organization"]["name"] == "aaaa"
    # same size, same mtime, same inode: the file watcher cannot see this; only SIGHUP can
    before = cluster.path.stat()
    cluster.path.write_text(cluster.path.read_text().replace("name: aaaa", "name: acme"))
    os.utime(cluster.path, ns=(before.st_atime_ns, before.st_mtime_ns))
    time.sleep(1.5)
    assert admin.get("/config")["config"]["organization"]["name"] == "aaaa"
    cluster.procs[0].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while admin.get("/config")["config"]["organization"]["name"] != "acme":
        assert time.monotonic() < deadline, "SIGHUP did not reload the config"
        time.sleep(0.05)
    assert cluster.procs[0].poll() is None  # reloaded, not stopped
    assert requests.get(url + "/readyz", timeout=5).json()["checks"]["config"][
        "generation"] == 2
