"""Every setting either applies on a reload or is reported as waiting for a restart, by
``/readyz``, ``/admin/status`` and ``tokenstile check``."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
import requests
from click.testing import CliRunner
from pydantic import BaseModel

from tests.admin.conftest import ADMIN_KEY, Admin, FileGateway
from tests.conftest import FakeHandle, WebhookReceiver, deep_merge
from tokenstile.cli import main
from tokenstile.config import Config
from tokenstile.gateway.reload import RELOADED, RESTART_ONLY

HI = [{"role": "user", "content": "hi"}]


def reload(gateway: FileGateway, config: dict[str, Any]) -> dict[str, Any]:
    gateway.write(config)
    status: dict[str, Any] = Admin(gateway.url).call("POST", "/config/reload")
    assert status["status"] == "ok", status
    return status


def chat(gateway: FileGateway, key: str, model: str = "gpt-4o-mini",
         messages: list[dict[str, str]] = HI) -> Any:
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    return api.chat.completions.with_raw_response.create(model=model, messages=messages,
                                                         max_tokens=5)


def metric_lines(gateway: FileGateway, name: str) -> list[str]:
    text = requests.get(gateway.url + "/metrics", timeout=5).text
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_every_setting_reloads_or_waits_for_a_restart() -> None:
    """The table of who applies what covers the whole schema: a new setting must be
    placed in RELOADED (and applied by ``Runtime.reconfigure``) or in RESTART_ONLY."""
    sections = {field.alias or name for name, field in Config.model_fields.items()}
    assert set(RELOADED) | set(RESTART_ONLY) >= sections
    assert set(RELOADED) <= sections and set(RESTART_ONLY) <= sections
    for section, names in RESTART_ONLY.items():
        model = Config.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        assert set(names) <= set(model.model_fields), section
        if set(names) != set(model.model_fields):  # the rest of the section reloads
            assert section in RELOADED, section


def test_each_section_applies_on_a_reload(make_file_gateway: Any, file_config: dict[str, Any],
                                          fake: FakeHandle) -> None:
    gateway: FileGateway = make_file_gateway(file_config)
    rt = gateway.runtime
    key = gateway.key(project="p")
    chat(gateway, key)
    reload(gateway, deep_merge(file_config, {
        "server": {"max_body_bytes": 2048, "timezone": "Europe/Paris",
                   "default_output_tokens": 77, "reservation_lease_s": 33},
        "auth": {"key_cache_ttl_s": 7},
        "upstreams": {"second": {"kind": "openai", "base_url": fake.v1, "api_key": "sk-2"}},
        "routes": [{"match": "house-model", "upstream": "second", "model": "gpt-4o-mini"}],
        "prices": {"acme-llm": {"input": 1.0, "output": 2.0}},
        "hidden_input": {"fallback_tokens": 1234},
        "hidden_reasoning": {"default_tokens_per_s": 9.0},
        "background_responses": {"max_wait_s": 99},
        "organization": {"name": "acme"},
        "projects": {"p": {"daily_limit": 100_000}},
        "users": {"pro": {"daily_limit": 5000}},
        "features": {"faq": {"max_output": 50}},
        "limits": [{"name": "hourly", "scope": "project", "window": "hour", "amount": 9000}],
        "global": {"requests_per_minute": 600},
        "alerts": [{"threshold": 0.8, "action": "warn"}],
        "alerting": {"interval_s": 5, "hourly_cost_usd": 3.0,
                     "channels": {"ops": {"kind": "log"}}},
        "policies": {"request_wordlists": "internal:block",
                     "wordlists": {"internal": ["project zeus"]}},
        "resilience": {"retries": 3, "circuit_breaker": {"failures": 9}},
        "degradation": {"throttle_max_wait_s": 4.5, "throttle_queue": 12},
        "cache": {"store": "memory://", "ttl_s": 60, "single_flight_wait_s": 3},
    }))
    gw = gateway.app.gateway.get()
    # server: the request path, admission, the alert rules
    too_big = requests.post(gateway.v1 + "/chat/completions", data=b"x" * 3000,
                            headers={"authorization": f"Bearer {key}"}, timeout=5)
    assert too_big.status_code == 413
    assert rt.admission.default_cap == 77 and rt.admission.leases.lease_s == 33
    assert rt.periodic.settings.tz == "Europe/Paris"
    assert rt.auth._config.key_cache_ttl_s == 7
    assert rt.router.resolve("house-model").upstream == "second"
    assert rt.pricer.known("acme-llm")
    assert rt.admission.hidden.fallback == 1234
    assert gw.relay.hidden_reasoning.default_tokens_per_s == 9.0
    assert rt.background.config.background_responses.max_wait_s == 99
    names = {limit.name for limit in rt.admission.limits}
    assert {"projects.p.daily_limit", "users.pro.daily_limit", "features.faq.daily_limit",
            "hourly", "global.requests_per_minute"} - names == {"features.faq.daily_limit"}
    assert rt.periodic.limits == rt.admission.limits
    assert rt.alerts.channels.keys() == {"ops"}
    assert (rt.periodic.interval_s, rt.periodic.settings.hourly_cost_usd) == (5, 3.0)
    blocked = requests.post(gateway.v1 + "/chat/completions", headers={
        "authorization": f"Bearer {key}"}, json={
        "model": "gpt-4o-mini", "max_tokens": 5,
        "messages": [{"role": "user", "content": "about project zeus"}]}, timeout=5)
    assert blocked.status_code == 422
    assert gw.forwarder.config.resilience.retries == 3
    assert rt.breakers.config is not None and rt.breakers.config.failures == 9
    assert (rt.degrader.pacer.max_wait_s, rt.degrader.pacer.max_queue) == (4.5, 12)
    assert rt.caching.config is not None and rt.caching.config.ttl_s == 60
    assert rt.caching.flights is not None and rt.caching.flights.wait_s == 3
    assert Admin(gateway.url).get("/status")["config"]["pending_restart"] == []


def test_a_reload_relabels_metrics(make_file_gateway: Any, file_config: dict[str, Any],
                                   fake: FakeHandle) -> None:
    """Models get a metric label of their own once a reload prices or routes them."""
    gateway: FileGateway = make_file_gateway(file_config)
    key = gateway.key(project="p")
    chat(gateway, key, model="acme-llm")
    assert any('model="other"' in line
               for line in metric_lines(gateway, "tokenstile_requests_total"))
    reload(gateway, deep_merge(file_config, {
        "prices": {"acme-llm": {"input": 1.0, "output": 2.0}},
        "routes": [{"match": "house-model", "upstream": "openai", "model": "gpt-4o-mini"}]}))
    chat(gateway, key, model="acme-llm")
    chat(gateway, key, model="house-model")
    lines = metric_lines(gateway, "tokenstile_requests_total")
    assert any('model="acme-llm"' in line for line in lines), lines
    cost = metric_lines(gateway, "tokenstile_cost_usd_total")
    assert any('model="acme-llm"' in line for line in cost), cost


async def test_a_reload_rebuilds_the_alert_channels(
        make_file_gateway: Any, file_config: dict[str, Any], fake: FakeHandle,
        webhook: WebhookReceiver) -> None:
    received = webhook.bodies
    limits = {"limits": [{"name": "daily", "scope": "project", "window": "day",
                          "unit": "requests", "amount": 4, "thresholds": [
                              {"threshold": 0.5, "action": "warn", "channels": ["ops"]},
                              {"threshold": 0.75, "action": "warn",
                               "channels": ["ops"]}]}],
              "alerting": {"anomaly": False, "projection": False,
                           "daily_summary": False}}
    # "ops" is named but not defined: its alerts go to the log
    gateway = await asyncio.to_thread(make_file_gateway, deep_merge(file_config, limits))
    key = await asyncio.to_thread(gateway.key, "p")
    for _ in range(2):  # the 50 % threshold, to the log
        await asyncio.to_thread(chat, gateway, key)
    for _ in range(100):  # delivered (after the answer: alerts are off the hot path)
        if gateway.runtime.alerts.stats.delivered:
            break
        await asyncio.sleep(0.05)
    assert gateway.runtime.alerts.stats.delivered == 1
    await asyncio.to_thread(reload, gateway, deep_merge(file_config, deep_merge(limits, {
        "alerting": {"channels": {"ops": {
            "kind": "webhook", "url": webhook.url}}}})))
    await asyncio.to_thread(chat, gateway, key)  # the 75 % threshold, to the webhook
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.05)
    assert [alert["dedupe_key"].rsplit(":", 1)[1] for alert in received] == ["0.75"]


def test_a_reload_applies_the_cache_settings(make_file_gateway: Any,
                                             file_config: dict[str, Any],
                                             fake: FakeHandle) -> None:
    gateway: FileGateway = make_file_gateway(file_config)
    key = gateway.key(project="p")
    for _ in range(2):  # no cache yet
        assert "x-tokenstile-cache" not in chat(gateway, key).headers
    assert fake.fake.tally.requests == 2
    reload(gateway, deep_merge(file_config, {"cache": {"store": "memory://"}}))
    assert [chat(gateway, key).headers["x-tokenstile-cache"] for _ in range(2)] == \
        ["miss", "hit"]
    assert fake.fake.tally.requests == 3
    # the rules change: this project's answers are no longer cached
    reload(gateway, deep_merge(file_config, {"cache": {
        "store": "memory://", "rules": [{"match": {"project": "p"}, "mode": "off"},
                                        {"mode": "always"}]}}))
    assert "x-tokenstile-cache" not in chat(gateway, key).headers
    assert fake.fake.tally.requests == 4
    # another store: opened at once, empty
    reload(gateway, deep_merge(file_config, {"cache": {
        "store": f"sqlite:///{gateway.path.parent}/reloaded-cache.db"}}))
    assert [chat(gateway, key).headers["x-tokenstile-cache"] for _ in range(2)] == \
        ["miss", "hit"]
    assert fake.fake.tally.requests == 5
    reload(gateway, file_config)  # and off again
    assert "x-tokenstile-cache" not in chat(gateway, key).headers


@pytest.mark.parametrize("setting", [f"{section}.{name}"
                                     for section, names in RESTART_ONLY.items()
                                     for name in names])
def test_restart_only_settings_are_reported(
        setting: str, make_file_gateway: Any, file_config: dict[str, Any],
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway: FileGateway = make_file_gateway(file_config)
    section, name = setting.split(".")
    value: Any = {"host": "0.0.0.0", "port": 9999, "workers": 4, "admin_host": "127.0.0.2",
                  "admin_port": 9998, "counters": f"sqlite:///{tmp_path}/other-counters.db",
                  "database": f"sqlite:///{tmp_path}/other.db",
                  "spool_dir": str(tmp_path / "spool")}[name]
    changed = deep_merge(file_config, {section: {name: value}})
    # before the reload, ``check`` compares the file with the running gateway
    gateway.write(changed)
    monkeypatch.setenv("TOKENSTILE_ADMIN_KEY", ADMIN_KEY)
    before = CliRunner().invoke(main, ["check", "--config", str(gateway.path),
                                       "--url", gateway.url])
    assert before.exit_code == 0, before.output
    assert f"{setting} differs in {gateway.path}" in before.output
    status = reload(gateway, changed)
    assert status["pending_restart"] == [setting]
    ready = requests.get(gateway.url + "/readyz", timeout=5).json()
    assert ready["checks"]["config"]["pending_restart"] == [setting]
    after = CliRunner().invoke(main, ["check", "--url", gateway.url])
    assert f"{setting} changed: applies at the next restart" in after.output
    running = Admin(gateway.url).get("/config")["config"][section][name]
    assert running != value  # the running value stays until the restart
