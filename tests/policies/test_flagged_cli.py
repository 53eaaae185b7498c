"""``tokenstile flagged`` against the database of a real gateway that blocked, rewrote and
flagged requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import yaml
from click.testing import CliRunner

from tests.policies.conftest import PolicyGateway
from tokenstile.cli import main

Make = Callable[..., PolicyGateway]


@pytest.fixture
def recorded(policy_gateway: Make, tmp_path: Path) -> tuple[PolicyGateway, Path]:
    gw = policy_gateway({"max_tokens": {"limit": 10, "mode": "clamp"},
                         "projects": {"web": {"request_wordlists": "profanity:audit"}},
                         "keys": {"k": {"enforce_user_ids": True}}})
    with pytest.raises(openai.UnprocessableEntityError):
        gw.chat("hello", max_tokens=5)  # no user: blocked
    gw.chat("hello", max_tokens=50, user="u")  # clamped
    gw.chat("damn", max_tokens=5, user="u")  # audited
    gw.chat("fine", max_tokens=5, user="u")  # nothing to report
    other = gw.gateway.key(project="batch", name="other")
    openai.OpenAI(base_url=gw.gateway.v1, api_key=other, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])  # cap set
    rows = gw.rows()
    assert len(rows) == 5
    config = tmp_path / "cli.yaml"
    database = gw.gateway.config.storage.database
    config.write_text(yaml.safe_dump({"storage": {"database": database}}))
    return gw, config


def run(config: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["flagged", "--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_lists_every_flagged_request_newest_first(recorded: tuple[PolicyGateway, Path]) -> None:
    _, config = recorded
    items = json.loads(run(config, "--json"))
    assert [i["block_reason"] or i["flags"] for i in items] == [
        ["max_tokens:cap_set"],
        ["request_wordlists:audit:profanity"],
        ["max_tokens:clamped"],
        "policy:user_required",
    ]
    blocked = items[-1]
    assert blocked["status"] == 422 and blocked["outcome"] == "blocked"
    assert blocked["policies"][0]["message"].startswith(
        "requests for this key must name their end user")


def test_filters(recorded: tuple[PolicyGateway, Path]) -> None:
    gw, config = recorded
    by_policy = json.loads(run(config, "--json", "--policy", "max_tokens"))
    assert [i["flags"] for i in by_policy] == [["max_tokens:cap_set"], ["max_tokens:clamped"]]
    by_project = json.loads(run(config, "--json", "--project", "batch"))
    assert [i["project"] for i in by_project] == ["batch"]
    key_id = gw.rows()[0].key_id
    assert key_id is not None
    by_key = json.loads(run(config, "--json", "--key", key_id))
    assert len(by_key) == 3 and {i["key_id"] for i in by_key} == {key_id}
    assert json.loads(run(config, "--json", "--since", "2999-01-01")) == []
    assert len(json.loads(run(config, "--json", "--limit", "2"))) == 2


def test_table(recorded: tuple[PolicyGateway, Path]) -> None:
    _, config = recorded
    lines = run(config, "--policy", "enforce_user_ids").splitlines()
    assert lines[0].split() == ["TIME", "REQUEST", "KEY", "PROJECT", "MODEL", "STATUS",
                                "OUTCOME", "REASONS"]
    assert len(lines) == 3
    assert "policy:user_required, enforce_user_ids:blocked" in lines[2]
    assert run(config, "--policy", "nothing-like-this") == "(no flagged requests)\n"
