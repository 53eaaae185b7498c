"""``tokenstile reconcile`` end to end: SDK calls through a real gateway to the fake
upstream, whose admin usage and cost reports are computed from what it served; nothing
seeded reconciles to zero drift, a seeded drift is found, stored, alerted and exposed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway
from tests.stores.conftest import pg_database as pg_database  # the fixtures
from tests.stores.conftest import pg_url as pg_url
from tokenstile.cli import main
from tokenstile.stores.alerts_sqlite import SqliteAlertHistory
from tokenstile.stores.records import record_store_from_url

OPENAI_ADMIN = "sk-admin-reconcile-0123456789abcdef"
ANTHROPIC_ADMIN = "sk-ant-admin01-reconcile-0123456789"
CHAT = [{"role": "user", "content": "hello there"}]


def _config(fake: FakeHandle, db: str, **reconcile: Any) -> dict[str, Any]:
    return {
        "upstreams": {
            "openai": {"kind": "openai", "base_url": fake.v1, "api_key": UPSTREAM_KEY},
            "claude": {"kind": "anthropic", "base_url": fake.url, "api_key": UPSTREAM_KEY}},
        "routes": [{"match": "claude-*", "upstream": "claude"}],
        "storage": {"counters": "memory://", "database": db},
        "reconcile": {
            "openai": {"admin_key": "${OPENAI_ADMIN_KEY}", "base_url": fake.v1},
            "anthropic": {"admin_key": "${ANTHROPIC_ADMIN_KEY}", "base_url": fake.url},
            "alert_above_usd": 0.5, **reconcile},
    }


@pytest.fixture
def setup(fake: FakeHandle, make_gateway: Any, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, Path]:
    db = f"sqlite:///{tmp_path}/ledger.db"
    gateway = make_gateway({k: v for k, v in _config(fake, db).items() if k != "reconcile"})
    path = tmp_path / "tokenstile.yaml"
    path.write_text(yaml.safe_dump(_config(fake, db)))
    monkeypatch.setenv("OPENAI_ADMIN_KEY", OPENAI_ADMIN)
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", ANTHROPIC_ADMIN)
    return gateway, path


def _calls(gateway: Gateway) -> None:
    key = gateway.key(project="search")
    oa = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    for model in ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o"):
        oa.chat.completions.create(model=model, messages=CHAT, max_tokens=20)
    stream = oa.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=20,
                                        stream=True, stream_options={"include_usage": True})
    for _ in stream:
        pass
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    for _ in range(2):
        claude.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=CHAT)
    oa.close()
    claude.close()
    assert all(r.cost_nano > 0 for r in gateway.rows())  # flushes the ledger too


def _reconcile(path: Path, provider: str, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["reconcile", "--provider", provider, "--config",
                                       str(path), "--json", *extra])
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = orjson.loads(result.output)
    return out


def test_nothing_seeded_reconciles_to_zero_drift(setup: tuple[Gateway, Path],
                                                 fake: FakeHandle) -> None:
    gateway, path = setup
    _calls(gateway)
    for provider, models in (("openai", {"gpt-4o-mini": 2, "gpt-4o": 2}),
                             ("anthropic", {"claude-haiku-4-5": 2})):
        # 40 days: more daily buckets than one page holds, so the reports are paged.
        run = _reconcile(path, provider, "--since", "40d")
        assert run["provider_tokens"] == run["ledger_tokens"] > 0
        assert run["drift_tokens"] == 0 and run["drift_nano"] == 0, run["rows"]
        assert run["ledger_nano"] > 0 and not run["alerted"] and not run["alert_sent"]
        seen = {r["model"]: r["ledger_requests"] for r in run["rows"]}
        assert seen == models
    # The table a person reads.
    result = CliRunner().invoke(main, ["reconcile", "--provider", "openai", "--config",
                                       str(path)])
    assert result.exit_code == 0, result.output
    assert "gpt-4o-mini" in result.output and "DRIFT USD" in result.output
    assert OPENAI_ADMIN not in result.output


def test_seeded_drift_is_found_stored_alerted_and_exposed(
        setup: tuple[Gateway, Path], fake: FakeHandle, tmp_path: Path) -> None:
    gateway, path = setup
    _calls(gateway)
    # Calls that went around the gateway: 3 USD and 50k tokens of gpt-4o today.
    fake.fake.seed_drift("gpt-4o", input_tokens=40_000, output_tokens=10_000, usd=3.0)
    run = _reconcile(path, "openai")
    [row] = [r for r in run["rows"] if r["drift_nano"]]
    assert (row["model"], row["drift_tokens"], row["drift_nano"]) == \
        ("gpt-4o", 50_000, 3_000_000_000)
    assert run["drift_nano"] == 3_000_000_000 and run["alerted"] and run["alert_sent"]
    assert all(r["drift_tokens"] == 0 for r in run["rows"] if r["model"] != "gpt-4o")

    # The alert went through the alert engine: recorded (and deduplicated) in its history.
    async def alerts() -> list[Any]:
        history = SqliteAlertHistory(f"sqlite:///{tmp_path}/ledger.db")
        await history.open()
        try:
            return await history.recent()
        finally:
            await history.close()

    [alert] = [a for a in asyncio.run(alerts()) if a.alert.kind == "reconcile_drift"]
    assert "gpt-4o" in alert.alert.message and "+3.0000" in alert.alert.message
    assert OPENAI_ADMIN not in alert.alert.message
    again = _reconcile(path, "openai")
    assert again["alerted"] and not again["alert_sent"]  # the same drift: one alert

    # Anthropic stays clean: drift is per provider.
    assert _reconcile(path, "anthropic")["drift_nano"] == 0

    # Every run is stored.
    async def runs() -> list[Any]:
        store = record_store_from_url(f"sqlite:///{tmp_path}/ledger.db")
        await store.open()
        try:
            return await store.runs()
        finally:
            await store.close()

    stored = asyncio.run(runs())
    assert [r.provider for r in stored] == ["anthropic", "openai", "openai"]
    assert stored[1].drift_nano == 3_000_000_000 and stored[1].rows

    # The gateway exposes the last drift per provider as a gauge, and lists the runs.
    import requests

    text = requests.get(gateway.url + "/metrics", timeout=5).text
    assert 'tokenstile_reconcile_drift_usd{provider="openai"} 3.0' in text
    assert 'tokenstile_reconcile_drift_usd{provider="anthropic"} 0.0' in text
    assert 'tokenstile_reconcile_drift_tokens{provider="openai"} 50000.0' in text


def test_admin_key_is_required_and_never_shown(setup: tuple[Gateway, Path],
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path, fake: FakeHandle) -> None:
    _, path = setup
    # A wrong key: the provider's 401 is reported, the key is not.
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-proj-not-an-admin-key-123456")
    result = CliRunner().invoke(main, ["reconcile", "--provider", "openai", "--config",
                                       str(path)])
    assert result.exit_code == 1
    assert "answered 401" in result.output and "sk-proj-not-an-admin" not in result.output
    # No key configured at all.
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"storage": {"database": f"sqlite:///{tmp_path}/x.db"}}))
    result = CliRunner().invoke(main, ["reconcile", "--provider", "anthropic", "--config",
                                       str(bare)])
    assert result.exit_code == 1 and "reconcile.anthropic.admin_key" in result.output


def test_runs_listed_by_the_admin_api(setup: tuple[Gateway, Path], make_gateway: Any,
                                      fake: FakeHandle, tmp_path: Path) -> None:
    gateway, path = setup
    _calls(gateway)
    fake.fake.seed_drift("claude-haiku-4-5", provider="anthropic", output_tokens=7, usd=-0.25)
    run = _reconcile(path, "anthropic")
    assert run["drift_nano"] == -250_000_000 and run["drift_tokens"] == 7
    assert not run["alerted"]  # under alert_above_usd
    admin = make_gateway(yaml.safe_load(path.read_text().replace(
        "${OPENAI_ADMIN_KEY}", OPENAI_ADMIN).replace("${ANTHROPIC_ADMIN_KEY}",
                                                      ANTHROPIC_ADMIN))
        | {"server": {"admin_key": "adm-0123456789abcdef0123456789"}})
    import requests

    answer = requests.get(admin.url + "/admin/reconcile/runs", timeout=5, headers={
        "authorization": "Bearer adm-0123456789abcdef0123456789"}).json()
    [listed] = answer["data"]
    assert listed["id"] == run["id"] and listed["drift_usd"] == -0.25
    assert listed["rows"] and time.time() - listed["ts"] < 60


def test_on_postgresql(fake: FakeHandle, make_gateway: Any, pg_url: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run with the ledger and the runs in PostgreSQL."""
    gateway = make_gateway({k: v for k, v in _config(fake, pg_url).items()
                            if k != "reconcile"})
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump(_config(fake, pg_url)))
    monkeypatch.setenv("OPENAI_ADMIN_KEY", OPENAI_ADMIN)
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", ANTHROPIC_ADMIN)
    _calls(gateway)
    clean = _reconcile(path, "openai")
    assert clean["drift_tokens"] == 0 and clean["drift_nano"] == 0 and clean["ledger_tokens"]
    fake.fake.seed_drift("claude-haiku-4-5", provider="anthropic", input_tokens=1000, usd=1.5)
    drifted = _reconcile(path, "anthropic")
    assert (drifted["drift_tokens"], drifted["drift_nano"], drifted["alert_sent"]) == \
        (1000, 1_500_000_000, True)

    async def runs() -> list[Any]:
        store = record_store_from_url(pg_url)
        await store.open()
        try:
            return await store.runs()
        finally:
            await store.close()

    assert [r.id for r in asyncio.run(runs())] == [drifted["id"], clean["id"]]
