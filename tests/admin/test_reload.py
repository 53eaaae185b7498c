"""Config hot reload: a bad file is refused while traffic continues, a good one applies,
requests in flight finish under the config they started with, counters survive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest
import requests

from tests.admin.conftest import Admin, FileGateway
from tests.conftest import FakeHandle, deep_merge

CHAT = [{"role": "user", "content": "hello"}]


def call(gateway: FileGateway, key: str) -> Any:
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    return api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=20)


def readyz(gateway: FileGateway) -> dict[str, Any]:
    resp = requests.get(gateway.url + "/readyz", timeout=5)
    assert resp.status_code == 200
    config: dict[str, Any] = resp.json()["checks"]["config"]
    return config


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_bad_file_is_refused_and_a_good_one_applied(
        make_file_gateway: Any, file_config: dict[str, Any]) -> None:
    config = deep_merge(file_config, {"projects": {"p": {"daily_limit": 100_000}}})
    gateway = make_file_gateway(config)
    key = gateway.key(project="p")
    call(gateway, key)
    used = sum(r.input_tokens + r.output_tokens for r in gateway.rows())
    # an invalid file: refused, reported, and the running config keeps serving
    gateway.path.write_text("projects:\n  p:\n    daily_limit: lots\n")
    wait_for(lambda: readyz(gateway)["status"] == "reload_failed")
    status = readyz(gateway)
    assert status["generation"] == 1
    assert any("projects.p.daily_limit" in line for line in status["errors"])
    assert not any("lots" in line for line in status["errors"])  # values are not echoed
    call(gateway, key)
    assert Admin(gateway.url).call("POST", "/config/reload", expect=422)["error"]["code"] \
        == "config_invalid"
    # a valid file with a lower budget: applied, and the counters kept what was used
    gateway.write(deep_merge(file_config, {"projects": {"p": {"daily_limit": used + 5}}}))
    wait_for(lambda: readyz(gateway)["status"] == "ok")
    assert readyz(gateway)["generation"] == 2
    with pytest.raises(openai.RateLimitError) as limited:
        call(gateway, key)
    assert f"of its {used + 5:,} daily tokens" in limited.value.message


def test_start_time_settings_wait_for_a_restart(make_file_gateway: Any,
                                                file_config: dict[str, Any]) -> None:
    gateway = make_file_gateway(file_config)
    admin = Admin(gateway.url)
    gateway.write(deep_merge(file_config, {"server": {"port": 9999},
                                           "organization": {"name": "acme"}}))
    status = admin.call("POST", "/config/reload")
    assert status["pending_restart"] == ["server.port"]
    config = admin.get("/config")["config"]
    assert (config["server"]["port"], config["organization"]["name"]) == (8700, "acme")
    assert admin.get("/status")["config"]["generation"] >= 2


def test_requests_in_flight_finish_under_their_config(
        make_file_gateway: Any, file_config: dict[str, Any], fake: FakeHandle) -> None:
    cheap = deep_merge(file_config, {"prices": {"gpt-4o-mini": {"input": 1, "output": 1}}})
    dear = deep_merge(file_config, {"prices": {"gpt-4o-mini": {"input": 1000,
                                                                "output": 1000}}})
    gateway = make_file_gateway(cheap)
    key = gateway.key(project="p")
    body = {"model": "gpt-4o-mini", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": "slow [[fake:chunk_delay_ms=150]]"}]}

    async def slow() -> int:
        async with aiohttp.ClientSession() as session, session.post(
                gateway.v1 + "/chat/completions", json=body,
                headers={"authorization": f"Bearer {key}"}) as resp:
            await resp.content.readany()
            gateway.write(dear)
            Admin(gateway.url).call("POST", "/config/reload")
            await resp.read()
            return resp.status

    assert asyncio.run(slow()) == 200
    call(gateway, key)
    first, second = gateway.rows()
    per_token_first = first.cost_nano / (first.input_tokens + first.output_tokens)
    per_token_second = second.cost_nano / (second.input_tokens + second.output_tokens)
    assert per_token_second == pytest.approx(per_token_first * 1000, rel=0.01)


def test_without_a_file_there_is_nothing_to_reload(admin: Admin) -> None:
    assert admin.call("POST", "/config/reload", expect=409)["error"]["code"] == "no_config_file"
