"""Budgets end to end: the configs users already wrote load and are enforced, limits never
overshoot, errors say what limit, what was used and when it resets."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import FakeHandle, Gateway
from tokenstile.cli import main
from tokenstile.clock import FakeClock
from tokenstile.config import load_config

# The token_limits.yaml of the proxy article, as written there.
SEED_TOKEN_LIMITS = """\
# token_limits.yaml
organization:
  monthly_budget: 10000000 # 10M tokens
  daily_cap: 500000
projects:
  production:
    daily_limit: 200000
    request_limit: 4000
    priority: high
  development:
    daily_limit: 50000
    request_limit: 2000
    priority: low
users:
  tier_premium:
    daily_limit: 50000
    rate_limit: 100 # requests per minute
  tier_standard:
    daily_limit: 10000
    rate_limit: 30
alerts:
  - threshold: 0.8
    action: warn
    channels: [slack, email]
  - threshold: 0.95
    action: throttle
    reduction: 0.5 # Reduce to 50% speed
  - threshold: 1.0
    action: block
    fallback: cache
"""

CHAT = [{"role": "user", "content": "hello"}]


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def test_the_seed_token_limits_yaml_loads_and_is_enforced(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "token_limits.yaml").write_text(SEED_TOKEN_LIMITS)
    env = {"OPENAI_BASE_URL": fake.v1, "OPENAI_API_KEY": "sk-from-env"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    checked = runner.invoke(main, ["check", "--config", "token_limits.yaml"])
    assert checked.exit_code == 0, checked.output
    created = runner.invoke(main, ["keys", "create", "--config", "token_limits.yaml",
                                   "--project", "development", "--user", "dana",
                                   "--tier", "standard"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("ts-")

    config = load_config("token_limits.yaml")
    assert config.upstreams["openai"].base_url == fake.v1
    assert config.storage.counters == "sqlite:///./tokenstile.db"
    # The clock stands at the start of this minute: the 31 requests below share one
    # per-minute window however long a loaded machine takes to send them.
    gateway = make_gateway(config, clock=FakeClock(time.time() // 60 * 60))
    api = sdk(gateway, key)
    # request_limit: input + output cap must fit 2,000 tokens for development
    with pytest.raises(openai.UnprocessableEntityError) as too_big:
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=2500)
    assert "allows 2,000 tokens per request" in too_big.value.message
    # the standard tier allows 30 requests a minute per user
    raw = api.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT,
                                                        max_tokens=5)
    assert raw.headers["x-ratelimit-limit-requests"] == "30"
    assert raw.headers["x-ratelimit-remaining-requests"] == "29"
    assert int(raw.headers["x-tokenstile-budget-remaining-tokens"]) < 10_000
    for _ in range(29):
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1)
    assert "user 'dana' has used or reserved 30 of its 30 per-minute requests" in \
        limited.value.message
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    assert fake.fake.tally.requests == 30
    # what was counted is what the ledger says
    rows = gateway.rows()
    assert sum(1 for r in rows if r.outcome == "ok") == 30
    assert [r.block_reason for r in rows if r.outcome == "blocked"] == [
        "request_limit:projects.development.request_limit", "budget:users.tier_standard.rate_limit"]
    usage = runner.invoke(main, ["usage", "--config", "token_limits.yaml", "--by", "project",
                                 "--json"])
    [summary] = orjson.loads(usage.output)
    assert (summary["project"], summary["requests"], summary["blocked"]) == (
        "development", 32, 2)
    assert summary["input_tokens"] == sum(r.input_tokens for r in rows)


def test_budget_exhaustion_names_scope_window_used_and_reset(
        make_gateway: Any, fake: FakeHandle) -> None:
    clock = FakeClock(datetime(2026, 11, 22, 15, 0, tzinfo=UTC))
    gateway = make_gateway({"server": {"timezone": "Europe/Berlin"},
                            "projects": {"production": {"daily_limit": 300}}}, clock=clock)
    key = gateway.key(project="production")
    api = sdk(gateway, key)
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=100)
    used = gateway.rows()[0].input_tokens + gateway.rows()[0].output_tokens
    with pytest.raises(openai.RateLimitError) as caught:
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=290)
    message = caught.value.message
    assert f"tokenstile: project 'production' has used or reserved {used} of its 300 daily tokens" \
        in message
    assert "resets at 00:00 Europe/Berlin" in message
    body: Any = caught.value.body
    assert body["code"] == "budget_exceeded" and body["type"] == "rate_limit_error"
    # 15:00 UTC is 16:00 in Berlin: eight hours to local midnight
    assert caught.value.response.headers["retry-after"] == str(8 * 3600)
    # the next Berlin day, the budget is back
    clock.advance(8 * 3600)
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=100)


def test_requests_without_a_cap_get_one_that_fits_the_budget(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"projects": {"p": {"daily_limit": 500}},
                            "server": {"default_output_tokens": 4096}})
    key = gateway.key(project="p")
    sdk(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    record = fake.fake.tally.last
    assert record is not None
    supplied = record.body["max_tokens"]
    [row] = gateway.rows()
    assert supplied == 500 - row.input_tokens
    assert "max_tokens_supplied" in row.flags


async def test_no_overshoot_under_concurrency(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"projects": {"tight": {"daily_limit": 2000}}})
    key = gateway.key(project="tight")
    body = {"model": "gpt-4o-mini", "max_tokens": 30,
            "messages": [{"role": "user", "content": "hi [[fake:delay_ms=20]]"}]}

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.post(gateway.v1 + "/chat/completions", json=body,
                                headers={"authorization": f"Bearer {key}"}) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(one(session) for _ in range(200)))
    ok = statuses.count(200)
    assert ok > 0 and statuses.count(429) == 200 - ok
    served = fake.fake.tally.input_tokens + fake.fake.tally.output_tokens
    assert served <= 2000
    rows = await asyncio.to_thread(gateway.rows)
    assert sum(r.input_tokens + r.output_tokens for r in rows) == served


def test_usd_budgets_need_a_price(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"limits": [{"scope": "project", "window": "day", "unit": "usd",
                                        "amount": 1.0}]})
    key = gateway.key(project="p")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk(gateway, key).chat.completions.create(model="my-private-model", messages=CHAT,
                                                  max_tokens=5)
    assert "no price is known for the model 'my-private-model'" in caught.value.message
    reply = sdk(gateway, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    remaining = float(reply.headers["x-tokenstile-budget-remaining-usd"])
    assert 0.99 < remaining < 1.0


def test_low_priority_projects_stop_short_of_the_shared_budget(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({
        "organization": {"daily_cap": 1000},
        "projects": {"batch": {"priority": "low"}, "prod": {"priority": "high"}},
        "server": {"low_priority_fraction": 0.5},
    })
    batch, prod = gateway.key(project="batch"), gateway.key(project="prod")
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(gateway, batch).chat.completions.create(model="gpt-4o-mini", messages=CHAT,
                                                    max_tokens=600)
    assert "organization 'default'" in caught.value.message and "of its 500 daily" \
        in caught.value.message
    sdk(gateway, prod).chat.completions.create(model="gpt-4o-mini", messages=CHAT,
                                               max_tokens=600)


def test_schedules_change_the_amount_by_time_of_day(make_gateway: Any,
                                                    fake: FakeHandle) -> None:
    clock = FakeClock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))  # a Monday
    gateway = make_gateway({"limits": [{
        "name": "office-hours", "scope": "project", "window": "minute", "unit": "requests",
        "amount": 1, "schedule": [{"days": ["mon", "tue", "wed", "thu", "fri"],
                                   "hours": "09-18", "amount": 3}]}]}, clock=clock)
    api = sdk(gateway, gateway.key(project="p"))
    for _ in range(3):
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1)
    clock.set(datetime(2026, 11, 23, 20, 0, tzinfo=UTC))  # evening: back to 1 a minute
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1)


def test_kill_switches_and_budget_overrides_apply_without_restart(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    db = tmp_path / "switch.db"
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump({
        "upstreams": {"openai": {"base_url": fake.v1, "api_key": "sk-x"}},
        "storage": {"counters": "memory://", "database": f"sqlite:///{db}"},
        "features": {"chat": {"daily_limit": 100_000}},
    }))
    gateway = make_gateway(load_config(config_file))
    api = sdk(gateway, gateway.key(project="p"))
    headers = {"x-tokenstile-feature": "chat"}
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1,
                                extra_headers=headers)
    runner = CliRunner()
    off = runner.invoke(main, ["switch", "off", "feature", "chat", "--reason", "runaway loop",
                               "--config", str(config_file)])
    assert off.exit_code == 0, off.output

    def blocked() -> bool:
        try:
            api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1,
                                        extra_headers=headers)
        except openai.PermissionDeniedError as err:
            assert "feature 'chat' is switched off (runaway loop)" in err.message
            return True
        return False

    deadline = time.monotonic() + 3
    while not blocked():
        assert time.monotonic() < deadline, "the switch did not take effect"
        time.sleep(0.1)
    # other features keep working
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1)
    runner.invoke(main, ["switch", "on", "feature", "chat", "--config", str(config_file)])
    deadline = time.monotonic() + 3
    while blocked():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # a runtime budget override replaces the file's amount
    from tokenstile.stores.database import Override

    gateway.run(gateway.runtime.db.set_override(
        Override("limit", "features.chat.daily_limit", {"amount": 1}, time.time())))
    gateway.run(gateway.runtime.overrides.refresh())
    with pytest.raises(openai.RateLimitError) as caught:
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=1,
                                    extra_headers=headers)
    assert "of its 1 daily tokens" in caught.value.message
    listed = runner.invoke(main, ["budgets", "--config", str(config_file)])
    assert "features.chat.daily_limit" in listed.output and "1 *" in listed.output
