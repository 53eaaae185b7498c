"""A gateway with an admin key, and a small client for its admin API."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import requests

from tests.conftest import Gateway

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
