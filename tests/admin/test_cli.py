"""The CLI against a running gateway through the admin API (--url), and `check` explaining
every error of a bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from click.testing import CliRunner

from tests.admin.conftest import ADMIN_KEY, FileGateway
from tests.conftest import Gateway
from tokenstile.cli import main

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture
def run(admin_gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TOKENSTILE_URL", admin_gateway.url)
    monkeypatch.setenv("TOKENSTILE_ADMIN_KEY", ADMIN_KEY)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def test_keys_through_the_admin_api(run: Any, admin_gateway: Gateway) -> None:
    created = orjson.loads(run("keys", "create", "--project", "search", "--user", "alice",
                               "--models", "gpt-4o*", "--expires", "30d", "--json"))
    assert created["key"].startswith("ts-") and created["state"] == "active"
    assert created["expires_at"] > created["created_at"] + 29 * 86400
    api = openai.OpenAI(base_url=admin_gateway.v1, api_key=created["key"], max_retries=0)
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    table = run("keys", "list")
    assert created["id"] in table and "search" in table and created["key"] not in table
    assert [k["id"] for k in orjson.loads(run("keys", "list", "--json"))] == [created["id"]]
    rotated = run("keys", "rotate", created["id"]).splitlines()[0]
    assert rotated.startswith("ts-") and rotated != created["key"]
    assert f"revoked {created['id']}" in run("keys", "revoke", created["id"])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=admin_gateway.v1, api_key=rotated, max_retries=0) \
            .chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    assert "no key 'key_nope'" in run("keys", "revoke", "key_nope", code=1)


def test_usage_budgets_switch_and_flagged_through_the_admin_api(
        run: Any, admin_gateway: Gateway) -> None:
    key = orjson.loads(run("keys", "create", "--project", "search", "--json"))["key"]
    api = openai.OpenAI(base_url=admin_gateway.v1, api_key=key, max_retries=0)
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    assert "model 'gpt-4o-mini' switched off" in run("switch", "off", "model", "gpt-4o-mini",
                                                     "--reason", "too dear")
    with pytest.raises(openai.PermissionDeniedError):
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    run("switch", "on", "model", "gpt-4o-mini")
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    admin_gateway.run(admin_gateway.runtime.ledger.flush())
    [summary] = orjson.loads(run("usage", "--by", "project", "--json"))
    assert (summary["project"], summary["requests"], summary["blocked"]) == ("search", 3, 1)
    csv_lines = run("usage", "--by", "project", "--csv").splitlines()
    assert csv_lines[0].startswith("project,requests") and csv_lines[1].startswith("search,3")
    assert "search" in run("usage")
    [item] = orjson.loads(run("flagged", "--json"))
    assert item["block_reason"] == "switched_off:model"
    assert "switched_off:model" in run("flagged")
    assert orjson.loads(run("budgets", "--json")) == []
    assert "(no budgets configured)" in run("budgets")


def test_errors_from_the_gateway_are_shown(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENSTILE_ADMIN_KEY", "wrong")
    assert "wrong admin key" in run("keys", "list", code=1)
    monkeypatch.delenv("TOKENSTILE_ADMIN_KEY")
    assert "--url needs the admin key" in run("keys", "list", code=2)
    monkeypatch.setenv("TOKENSTILE_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("TOKENSTILE_URL", "http://127.0.0.1:9")
    assert "cannot reach the gateway" in run("budgets", code=1)


def test_check_explains_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 99999\n  colour: blue\nprojects:\n  p:\n"
                   "    daily_limit: lots\nlimits:\n  - scope: galaxy\n    amount: 5\n"
                   "routes:\n  - match: x\n    upstream: nowhere\n")
    result = CliRunner().invoke(main, ["check", "--config", str(bad)])
    assert result.exit_code == 2
    out = result.output
    assert f"{bad}: the configuration is not valid" in out
    for expected in ("server.port: Input should be less than or equal to 65535",
                     "server.colour: Extra inputs are not permitted",
                     "projects.p.daily_limit: Input should be a valid integer",
                     "limits[0].scope: unknown scope 'galaxy'; expected one of"):
        assert expected in out, out
    broken = tmp_path / "broken.yaml"
    broken.write_text("server:\n  port: [1\n")
    result = CliRunner().invoke(main, ["check", "--config", str(broken)])
    assert result.exit_code == 2 and "line 3, column 1" in result.output
    assert "invalid YAML" in result.output
    missing = CliRunner().invoke(main, ["check", "--config", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "no configuration file at" in missing.output


def test_check_never_prints_a_store_password(tmp_path: Path) -> None:
    config = tmp_path / "stores.yaml"
    config.write_text("storage:\n"
                      "  counters: redis://:hunter2@127.0.0.1:6379/0\n"
                      "  database: postgresql://app:s3cret-pw@127.0.0.1:5432/test\n")
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "s3cret-pw" not in result.output
    assert "postgresql://app:[redacted]@127.0.0.1:5432/test" in result.output


def test_check_shows_a_running_gateways_refused_reload(
        make_file_gateway: Any, file_config: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway: FileGateway = make_file_gateway(file_config)
    monkeypatch.setenv("TOKENSTILE_ADMIN_KEY", ADMIN_KEY)
    runner = CliRunner()
    ok = runner.invoke(main, ["check", "--url", gateway.url])
    assert ok.exit_code == 0 and "generation 1" in ok.output, ok.output
    gateway.path.write_text("server:\n  workers: 0\n")
    runner.invoke(main, ["check", "--url", gateway.url])
    gateway.run(gateway.runtime.reloader.reload())  # type: ignore[union-attr]
    refused = runner.invoke(main, ["check", "--url", gateway.url])
    assert refused.exit_code == 2, refused.output
    assert "server.workers: Input should be greater than or equal to 1" in refused.output
