"""Fields a client controls cannot loosen a limit: several answers (``n``) are reserved
and capped as a whole, and absurd output caps are refused before they reach the counters
(they used to overflow the stores and end in a 500)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.conftest import FakeHandle, Gateway
from tests.hostile.test_fuzz import asgi_call

CHAT = [{"role": "user", "content": "hello there"}]


def post(gateway: Gateway, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, payload = gateway.run(asgi_call(
        gateway.app, "/v1/chat/completions", json.dumps(body).encode(),
        [(b"authorization", f"Bearer {key}".encode())]))
    return status, json.loads(payload)


def forwarded(fake: FakeHandle) -> dict[str, Any]:
    record = fake.fake.tally.last
    assert record is not None
    body: dict[str, Any] = record.body
    return body


def test_n_answers_share_a_per_request_output_limit(make_gateway: Any,
                                                    fake: FakeHandle) -> None:
    gateway: Gateway = make_gateway({"limits": [
        {"scope": "project", "window": "request", "unit": "output_tokens", "amount": 90}]})
    key = gateway.key()
    status, _ = post(gateway, key, {"model": "gpt-4o-mini", "n": 3, "messages": CHAT})
    assert status == 200
    assert forwarded(fake)["max_tokens"] == 30  # 3 answers x 30 <= 90
    status, _ = post(gateway, key, {"model": "gpt-4o-mini", "n": 3, "max_tokens": 500,
                                    "messages": CHAT})
    assert status == 200 and forwarded(fake)["max_tokens"] == 30


def test_n_answers_are_reserved_in_full(make_gateway: Any, fake: FakeHandle) -> None:
    gateway: Gateway = make_gateway({
        "server": {"default_output_tokens": 100},
        "projects": {"demo": {"daily_limit": 100_000, "request_limit": 2_000}}})
    key = gateway.key(project="demo")
    _, first = post(gateway, key, {"model": "gpt-4o-mini", "messages": CHAT})
    single = first["usage"]["prompt_tokens"]
    status, _ = post(gateway, key, {"model": "gpt-4o-mini", "n": 5, "messages": CHAT})
    assert status == 200
    assert forwarded(fake)["max_tokens"] == 100
    rows = gateway.rows()
    assert rows[-1].input_tokens == single
    # the per-request limit counts every answer: 5 x 400 > 2,000 - input
    status, answer = post(gateway, key, {"model": "gpt-4o-mini", "n": 5, "max_tokens": 400,
                                         "messages": CHAT})
    assert status == 422
    assert "output cap 2,000" in answer["error"]["message"]
    # a cap the gateway supplies is split between the answers to fit the limit
    gateway2: Gateway = make_gateway({"projects": {"demo": {"request_limit": 1_000}}})
    key2 = gateway2.key(project="demo")
    status, _ = post(gateway2, key2, {"model": "gpt-4o-mini", "n": 4, "messages": CHAT})
    assert status == 200
    assert forwarded(fake)["max_tokens"] * 4 + single <= 1_000


@pytest.mark.parametrize("counters", ["memory", "sqlite", "redis"])
@pytest.mark.parametrize("cap", [2**64 - 1, 2**63 - 1, 2**40])
def test_absurd_output_caps_get_400_not_500(make_gateway: Any, fake: FakeHandle,
                                            tmp_path: Any, counters: str, cap: int) -> None:
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/c.db",
           # the shared Redis, under a prefix of this test's own
           "redis": f"redis://127.0.0.1:6379/0?prefix=hostile{uuid.uuid4().hex[:8]}"}[counters]
    gateway: Gateway = make_gateway({"storage": {"counters": url}, "projects": {
        "demo": {"daily_limit": 10**12, "daily_budget_usd": 10**6}}})
    key = gateway.key(project="demo")
    for body in ({"model": "gpt-4o-mini", "max_tokens": cap, "messages": CHAT},
                 {"model": "gpt-4o-mini", "max_tokens": 2**20, "n": 2**20, "messages": CHAT}):
        status, answer = post(gateway, key, body)
        assert status == 400, answer
        assert "at most 2,147,483,647" in answer["error"]["message"]
    assert fake.fake.tally.requests == 0
