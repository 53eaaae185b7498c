"""Runtime overrides change enforcement at once, show next to the file's values, and are
kept in the database: a restarted gateway still applies them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.admin.conftest import ADMIN_KEY, Admin
from tests.conftest import UPSTREAM_KEY, FakeHandle

CHAT = [{"role": "user", "content": "hello"}]


def config(fake: FakeHandle, db: Path) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "upstreams": {"openai": {"kind": "openai", "base_url": fake.v1,
                                 "api_key": UPSTREAM_KEY}},
        "storage": {"counters": "memory://", "database": f"sqlite:///{db}"},
        "projects": {"search": {"daily_limit": 100_000}},
        "features": {"chat": {"max_output": 1000}},
    }


def call(url: str, key: str, feature: str | None = None) -> Any:
    api = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    headers = {"x-tokenstile-feature": feature} if feature else {}
    return api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=50,
                                       extra_headers=headers)


def test_a_budget_override_applies_at_once_and_survives_a_restart(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    gateway = make_gateway(config(fake, tmp_path / "db.sqlite"))
    admin = Admin(gateway.url)
    key = gateway.key(project="search")
    call(gateway.url, key)
    name = "projects.search.daily_limit"
    saved = admin.call("PUT", f"/overrides/limit/{name}", {"amount": 10})
    assert saved["value"] == {"amount": 10} and saved["author"] == "admin:bearer"
    with pytest.raises(openai.RateLimitError) as limited:
        call(gateway.url, key)
    assert "of its 10 daily tokens" in limited.value.message
    [view] = [v for v in admin.get("/limits")["data"] if v["name"] == name]
    assert (view["amount"], view["file_amount"], view["overridden"]) == (10, 100_000, True)
    [budget] = admin.get("/budgets")["data"]
    assert (budget["amount"], budget["file_amount"], budget["overridden"]) == (10, 100_000,
                                                                              True)
    gateway.close()
    # a new gateway on the same database applies it from its first request
    again = make_gateway(config(fake, tmp_path / "db.sqlite"))
    with pytest.raises(openai.RateLimitError):
        call(again.url, key)
    Admin(again.url).call("DELETE", f"/overrides/limit/{name}")
    call(again.url, key)
    assert Admin(again.url).call("DELETE", f"/overrides/limit/{name}", expect=404)["error"][
        "code"] == "override_not_found"


def test_kill_switch_and_shadow_mode(make_gateway: Any, fake: FakeHandle,
                                     tmp_path: Path) -> None:
    gateway = make_gateway(config(fake, tmp_path / "db.sqlite"))
    admin = Admin(gateway.url)
    key = gateway.key(project="search")
    admin.call("PUT", "/overrides/switch/feature/chat", {"enabled": False,
                                                          "reason": "runaway loop"})
    with pytest.raises(openai.PermissionDeniedError) as off:
        call(gateway.url, key, feature="chat")
    assert "runaway loop" in off.value.message
    call(gateway.url, key, feature="other")
    [feature] = admin.get("/features")["data"]
    assert (feature["enabled"], feature["file_enabled"]) == (False, True)
    assert feature["runtime_switch"]["reason"] == "runaway loop"
    admin.call("DELETE", "/overrides/switch/feature/chat")
    call(gateway.url, key, feature="chat")
    assert admin.call("PUT", "/overrides/switch/galaxy/x", {"enabled": False},
                      expect=404)["error"]["code"] == "unknown_switch_scope"
    # shadow mode: an exhausted limit in shadow lets the request through and flags it
    name = "projects.search.daily_limit"
    admin.call("PUT", f"/overrides/limit/{name}", {"amount": 1})
    admin.call("PUT", f"/overrides/shadow/{name}", {"shadow": True})
    call(gateway.url, key)
    assert f"shadow:{name}" in gateway.rows()[-1].flags
    kinds = {(o["kind"], o["target"]) for o in admin.get("/overrides")["data"]}
    assert kinds == {("limit", name), ("shadow", name)}


def test_an_override_for_an_unknown_limit_is_refused(admin: Admin) -> None:
    refused = admin.call("PUT", "/overrides/limit/nope", {"amount": 1}, expect=404)
    assert refused["error"]["code"] == "limit_not_found"
    assert admin.call("PUT", "/overrides/limit/x", {"amount": -1}, expect=422)
