"""Keys are compared in constant time or looked up by hash, the admin API refuses every
credential but the admin key on every route, and in passthrough mode no header, body field
or model name can send a request anywhere but the configured upstreams."""

from __future__ import annotations

import ast
import hmac
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import requests

from tests.conftest import FakeHandle, Gateway, served_fake
from tokenstile.admin.api import ENDPOINTS
from tokenstile.stores.database import hash_key

ADMIN_KEY = "adm-hostile-" + "0123456789abcdef" * 2
HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": HI}


# -- how keys are compared --------------------------------------------------------------------

AUTH_MODULES = ["tokenstile.gateway.auth", "tokenstile.admin.auth", "tokenstile.admin.dashboard",
                "tokenstile.admin.dashboard_session"]
SECRET_WORDS = ("key", "secret", "credential", "presented", "signature", "token", "password",
                "csrf")


@pytest.mark.parametrize("module", AUTH_MODULES)
def test_no_secret_is_compared_with_equals(module: str) -> None:
    """``==`` on two secrets returns at the first differing byte; these modules must use
    ``hmac.compare_digest`` (or look up a hash) instead."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    offenders = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare) or not any(
                isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        sides = [node.left, *node.comparators]
        if any(isinstance(side, ast.Constant) for side in sides):
            continue  # a mode or a literal, not a secret
        text = ast.get_source_segment(source, node) or ""
        if any(word in text.lower() for word in SECRET_WORDS):
            offenders.append(f"line {node.lineno}: {text}")
    assert not offenders, offenders


class Recorder:
    """Wraps the database and records every argument it is called with."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._db, name)
        if not callable(target):
            return target

        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, (*args, *kwargs.values())))
            return target(*args, **kwargs)

        return record


def test_tokenstile_keys_reach_the_database_only_as_hashes(gateway: Gateway,
                                                           fake: FakeHandle) -> None:
    key = gateway.key()
    recorder = Recorder(gateway.runtime.auth._db)
    gateway.runtime.auth._db = recorder  # type: ignore[assignment]
    gateway.runtime.auth.forget()
    for presented in (key, key[:-1] + ("A" if key[-1] != "A" else "B"), "ts-unknown"):
        requests.post(gateway.v1 + "/chat/completions", json=CHAT, timeout=10,
                      headers={"authorization": f"Bearer {presented}"})
    lookups = [args for name, args in recorder.calls if name == "key_by_hash"]
    assert (hash_key(key),) in lookups and len(lookups) == 3
    everything = repr(recorder.calls)
    assert key not in everything and key[3:15] not in everything


def test_the_admin_key_goes_through_compare_digest(make_gateway: Any, fake: FakeHandle,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr("tokenstile.gateway.auth.hmac.compare_digest", spy)
    gateway: Gateway = make_gateway({"server": {"admin_key": ADMIN_KEY}})
    wrong = ADMIN_KEY[:-1] + "X"
    assert requests.get(gateway.url + "/admin/keys", timeout=10,
                        headers={"authorization": f"Bearer {wrong}"}).status_code == 401
    assert requests.get(gateway.url + "/admin/keys", timeout=10,
                        headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    requests.post(gateway.v1 + "/chat/completions", json=CHAT, timeout=10,
                  headers={"authorization": f"Bearer {wrong}"})
    pairs = {(bytes(a), bytes(b)) for a, b in seen}
    assert (wrong.encode(), ADMIN_KEY.encode()) in pairs  # admin API and proxy alike
    assert (ADMIN_KEY.encode(), ADMIN_KEY.encode()) in pairs


# -- the admin API refuses every other credential ---------------------------------------------


@pytest.fixture
def admin_gateway(make_gateway: Any) -> Gateway:
    gateway: Gateway = make_gateway({"server": {"admin_key": ADMIN_KEY},
                                     "auth": {"mode": "both"}})
    return gateway


def concrete(path: str, key_id: str) -> str:
    return (path.replace("{key_id}", key_id).replace("{scope}", "project")
            .replace("{name}", "demo").replace("{request_id}", "req_nope"))


CREDENTIALS: dict[str, Any] = {
    "project key": lambda key: {"authorization": f"Bearer {key}"},
    "provider key": lambda key: {"authorization": "Bearer sk-live-" + "9" * 40},
    "admin key prefix": lambda key: {"authorization": f"Bearer {ADMIN_KEY[:12]}"},
    "admin key plus a byte": lambda key: {"authorization": f"Bearer {ADMIN_KEY}x"},
    "admin key as x-api-key": lambda key: {"x-api-key": ADMIN_KEY},
    "admin key as x-tokenstile-key": lambda key: {"x-tokenstile-key": ADMIN_KEY},
    "admin key as a cookie": lambda key: {"cookie": f"session={ADMIN_KEY}"},
}


@pytest.mark.parametrize("credential", sorted(CREDENTIALS))
def test_admin_routes_refuse_everything_but_the_admin_key(admin_gateway: Gateway,
                                                          credential: str) -> None:
    key = admin_gateway.key(project="demo")
    [record] = admin_gateway.run(admin_gateway.runtime.db.list_keys())
    headers = CREDENTIALS[credential](key)
    refused = 0
    for endpoint in ENDPOINTS:
        if endpoint.public:
            continue
        url = admin_gateway.url + "/admin" + concrete(endpoint.path, record.id)
        for query in ("", f"?key={ADMIN_KEY}&admin_key={ADMIN_KEY}"):
            resp = requests.request(endpoint.method, url + query, headers={
                "content-type": "application/json", **headers}, timeout=10,
                data=orjson.dumps({"project": "x", "amount": 1, "enabled": False}))
            if credential == "project key" and endpoint.readers and endpoint.method == "GET":
                # the dashboard's read-only twins (and the runs listing) serve a project key
                # its own project (its own key's runs)
                assert resp.status_code in (200, 404, 422), (endpoint.path, resp.text[:200])
                if resp.status_code == 200 and "scope" in resp.json():
                    assert resp.json()["scope"]["project"] == "demo"
                if resp.status_code == 200 and endpoint.path == "/runs":
                    assert all(r["key_id"] == record.id for r in resp.json()["data"])
                continue
            assert resp.status_code in (401, 403), (endpoint.method, endpoint.path,
                                                    resp.status_code, resp.text[:200])
            error = resp.json()["error"]
            assert error["message"].startswith("tokenstile: ")
            assert key not in resp.text and ADMIN_KEY not in resp.text
            refused += 1
    assert refused >= 50
    # nothing changed: the one key is still there, unrevoked, and no override was set
    [after] = admin_gateway.run(admin_gateway.runtime.db.list_keys(include_revoked=True))
    assert after.revoked_at is None and after.hash == record.hash
    assert admin_gateway.run(admin_gateway.runtime.db.list_overrides()) == []


# -- passthrough cannot choose where a request goes -------------------------------------------


@pytest.fixture
def evil() -> Iterator[FakeHandle]:
    with served_fake() as handle:
        yield handle


STEERING_HEADERS = ("host", "x-forwarded-host", "x-forwarded-proto", "forwarded",
                    "x-original-url", "x-rewrite-url", "x-tokenstile-upstream", "x-upstream",
                    "x-base-url", "openai-base-url", "x-openai-base-url", "base-url",
                    "azure-endpoint", "anthropic-base-url", "x-api-base", "openai-organization",
                    "x-forwarded-for", "x-real-ip")
STEERING_FIELDS = ("base_url", "api_base", "url", "endpoint", "upstream", "azure_endpoint",
                   "host", "baseURL")


async def steer(gateway: Gateway, evil: FakeHandle) -> list[int]:
    target = evil.url
    models = ["gpt-4o-mini", f"{target}/v1/chat/completions", f"//{target[7:]}/x",
              "../../../x", "gpt-4o-mini@" + target[7:], "gpt-4o-mini#x", "gpt-4o-mini?u=" +
              target, "%2e%2e/%2e%2e/x", f"gpt-4o-mini\r\nHost: {target[7:]}"]
    statuses = []
    async with aiohttp.ClientSession() as http:
        for model in models:
            body: dict[str, Any] = {**CHAT, "model": model,
                                    **dict.fromkeys(STEERING_FIELDS, target)}
            headers = {"authorization": "Bearer sk-client-own-key-123456",
                       **{h: target for h in STEERING_HEADERS if h != "host"},
                       "host": target[7:]}
            for path in ("/v1/chat/completions", f"/v1/chat/completions?base_url={target}"):
                async with http.post(gateway.url + path, data=orjson.dumps(body),
                                     headers=headers) as resp:
                    await resp.read()
                    statuses.append(resp.status)
            anthropic = {**body, "model": "claude-haiku-4-5"}
            async with http.post(gateway.url + "/v1/messages", data=orjson.dumps(anthropic),
                                 headers={**headers, "x-api-key": "sk-ant-client-own",
                                          "anthropic-version": "2023-06-01"}) as resp:
                await resp.read()
                statuses.append(resp.status)
    return statuses


@pytest.mark.parametrize("kind", ["openai", "azure"])
def test_passthrough_cannot_reach_another_upstream(make_gateway: Any, fake: FakeHandle,
                                                   evil: FakeHandle, kind: str) -> None:
    upstream = {"kind": kind, "base_url": fake.v1 if kind == "openai" else
                fake.url + "/openai", "api_key": None}
    gateway: Gateway = make_gateway({
        "auth": {"mode": "passthrough"},
        "upstreams": {"openai": upstream, "anthropic": {
            "kind": "anthropic", "base_url": fake.url, "api_key": None}}})
    import asyncio

    statuses = asyncio.run(steer(gateway, evil))
    assert 500 not in statuses
    assert evil.fake.tally.requests == 0, [r.route for r in evil.fake.tally.records]
    reached = fake.fake.tally.records
    assert reached, "nothing reached the configured upstream"
    for record in reached:
        headers = record.headers
        assert headers.get("host", "").startswith("127.0.0.1:") and \
            evil.url[7:] not in headers.get("host", "")
        for name in STEERING_HEADERS:
            if name != "host":
                assert name not in headers, (name, headers)
    assert {s for s in statuses} <= {200, 400, 404}
