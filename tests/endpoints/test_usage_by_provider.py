"""``tokenstile usage --by provider``: the ledger's upstreams summed per provider (an
upstream's ``provider`` setting, else the provider its address is, else its kind), from the
database or through the admin API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway
from tokenstile.cli import main

ADMIN_KEY = "adm-test-0123456789abcdef0123456789"
HI = [{"role": "user", "content": "hello"}]


def config(fake: FakeHandle, database: str) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY},
        "upstreams": {
            "openai": {"kind": "openai", "base_url": fake.v1, "api_key": UPSTREAM_KEY},
            "fast": {"kind": "openai", "base_url": fake.v1, "api_key": UPSTREAM_KEY,
                     "provider": "groq"},
            "claude": {"kind": "anthropic", "base_url": fake.url, "api_key": UPSTREAM_KEY},
        },
        "routes": [{"match": "llama-3.1-8b-instant", "upstream": "fast"}],
        "storage": {"counters": "memory://", "database": database},
    }


@pytest.fixture
def traffic(make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> Gateway:
    gateway: Gateway = make_gateway(config(fake, f"sqlite:///{tmp_path}/usage.db"))
    key = gateway.key()
    chat = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    for model in ("gpt-4o-mini", "gpt-4o-mini", "llama-3.1-8b-instant"):
        chat.chat.completions.create(model=model, messages=HI, max_tokens=5)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=HI)
    gateway.run(gateway.runtime.ledger.flush())
    return gateway


def expected(gateway: Gateway) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for row in gateway.rows():
        provider = {"openai": "openai", "fast": "groq", "claude": "anthropic"}[row.upstream]
        requests, cost = out.get(provider, (0, 0))
        out[provider] = (requests + 1, cost + row.cost_nano)
    return out


def summed(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    return {r["provider"]: (r["requests"], r["cost_nano"]) for r in rows}


def test_usage_by_provider_from_the_database(traffic: Gateway, fake: FakeHandle,
                                             tmp_path: Path) -> None:
    path = tmp_path / "tokenstile.yaml"
    path.write_text(yaml.safe_dump(config(fake, f"sqlite:///{tmp_path}/usage.db")))
    runner = CliRunner()
    result = runner.invoke(main, ["usage", "--by", "provider", "--json", "-c", str(path)])
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.output)
    assert summed(rows) == expected(traffic)
    assert summed(rows)["openai"][0] == 2 and all(cost > 0 for _, cost in summed(rows).values())
    both = runner.invoke(main, ["usage", "--by", "provider,upstream", "--json", "-c",
                                str(path)])
    assert {(r["provider"], r["upstream"]) for r in orjson.loads(both.output)} == {
        ("openai", "openai"), ("groq", "fast"), ("anthropic", "claude")}
    table = runner.invoke(main, ["usage", "--by", "provider", "-c", str(path)]).output
    assert "PROVIDER" in table and "groq" in table


def test_usage_by_provider_through_the_admin_api(traffic: Gateway,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENSTILE_URL", traffic.url)
    monkeypatch.setenv("TOKENSTILE_ADMIN_KEY", ADMIN_KEY)
    result = CliRunner().invoke(main, ["usage", "--by", "provider", "--json"])
    assert result.exit_code == 0, result.output
    assert summed(orjson.loads(result.output)) == expected(traffic)
