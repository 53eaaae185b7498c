"""A gateway with an admin key, and a small client for its admin API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import yaml

from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway
from tokenstile.clock import Clock

ADMIN_KEY = "adm-test-0123456789abcdef0123456789"


class Admin:
    """Calls ``/admin/...`` on a running gateway with the admin key."""

    def __init__(self, base: str, key: str | None = ADMIN_KEY) -> None:
        self.base = base.rstrip("/") + "/admin"
        self.session = requests.Session()
        if key:
            self.session.headers["authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, body: Any = None, expect: int | None = 200,
             **params: Any) -> Any:
        resp = self.session.request(method, self.base + path, params=params or None,
                                    data=None if body is None else orjson.dumps(body),
                                    headers={"content-type": "application/json"}, timeout=10)
        if expect is not None:
            assert resp.status_code == expect, (resp.status_code, resp.text)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.text

    def get(self, path: str, expect: int | None = 200, **params: Any) -> Any:
        return self.call("GET", path, expect=expect, **params)


@pytest.fixture
def admin_gateway(make_gateway: Any) -> Gateway:
    gateway: Gateway = make_gateway({"server": {"admin_key": ADMIN_KEY}})
    return gateway


@pytest.fixture
def admin(admin_gateway: Gateway) -> Admin:
    return Admin(admin_gateway.url)


class FileGateway(Gateway):
    """A gateway started from a config file, as ``tokenstile serve --config`` runs one, so it
    watches the file and reloads it."""

    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        from tokenstile.app import TokenstileApp
        from tokenstile.clock import SystemClock
        from tokenstile.config import load_config
        from tokenstile.gateway.runtime import Runtime
        from tokenstile.testing.server_thread import RunningServer

        self.path = path
        self.config = load_config(path, env={})
        self.runtime = Runtime.build(self.config, clock=clock or SystemClock())
        self.runtime.config_path = str(path)
        self.app = TokenstileApp(self.runtime)
        self.server = RunningServer(self.app)
        self.url = self.server.start()
        self.v1 = self.url + "/v1"

    def write(self, config: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(config))


@pytest.fixture
def file_config(fake: FakeHandle, tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "upstreams": {"openai": {"kind": "openai", "base_url": fake.v1,
                                 "api_key": UPSTREAM_KEY}},
        "storage": {"counters": "memory://", "database": f"sqlite:///{tmp_path}/file.db"},
    }


@pytest.fixture
def make_file_gateway(tmp_path: Path) -> Iterator[Any]:
    started: list[FileGateway] = []

    def make(config: dict[str, Any], clock: Clock | None = None) -> FileGateway:
        path = tmp_path / f"gateway-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = FileGateway(path, clock)
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.close()
