"""A key's own limits, set through the admin API, are enforced like configured ones, can be
overridden by name, and keep applying after a config reload."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.admin.conftest import Admin, FileGateway
from tests.conftest import deep_merge
from tokenstile.clock import FakeClock

CHAT = [{"role": "user", "content": "hello"}]


def call(gateway: FileGateway, key: str) -> Any:
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    return api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)


def test_a_keys_own_limits_are_enforced(make_file_gateway: Any,
                                        file_config: dict[str, Any]) -> None:
    # The clock stands at the start of this minute: every call below is in one window.
    gateway = make_file_gateway(file_config, FakeClock(time.time() // 60 * 60))
    admin = Admin(gateway.url)
    created = admin.call("POST", "/keys", {"project": "p", "limits": {
        "per_minute": {"window": "minute", "unit": "requests", "amount": 2}}}, expect=201)
    other = admin.call("POST", "/keys", {"project": "p"}, expect=201)
    call(gateway, created["key"])
    call(gateway, created["key"])
    with pytest.raises(openai.RateLimitError) as limited:
        call(gateway, created["key"])
    assert f"key '{created['id']}' has used or reserved 2 of its 2 per-minute requests" \
        in limited.value.message
    call(gateway, other["key"])  # other keys are not affected
    name = f"keys.{created['id']}.per_minute"
    [view] = [b for b in admin.get("/budgets")["data"] if b["name"] == name]
    assert (view["used"], view["amount"]) == (2, 2)
    # an amount override by name, then a reload: both keep applying
    admin.call("PUT", f"/overrides/limit/{name}", {"amount": 3})
    call(gateway, created["key"])
    gateway.write(deep_merge(file_config, {"organization": {"name": "acme"}}))
    admin.call("POST", "/config/reload")
    with pytest.raises(openai.RateLimitError):
        call(gateway, created["key"])
    # changed through the API: applies at once
    admin.call("PATCH", f"/keys/{created['id']}", {"limits": {}})
    admin.call("DELETE", f"/overrides/limit/{name}")
    call(gateway, created["key"])
