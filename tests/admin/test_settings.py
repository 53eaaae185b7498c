"""The configuration in force, as the admin API shows it: secrets never, limits and switches
next to each organization, project, team, tier and feature."""

from __future__ import annotations

from typing import Any

import orjson

from tests.admin.conftest import ADMIN_KEY, Admin
from tests.conftest import UPSTREAM_KEY, FakeHandle
from tokenstile.admin.redact import redact_url


def test_secrets_are_redacted(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({
        "server": {"admin_key": ADMIN_KEY},
        "upstreams": {"openai": {"base_url": fake.v1, "api_key": UPSTREAM_KEY,
                                 "headers": {"x-org-token": "hdr-secret-123"}}},
        "alerting": {"channels": {
            "ops": {"kind": "slack", "url": "https://hooks.example/services/T1/tok-secret-9"},
            "mail": {"kind": "email", "host": "smtp.example", "password": "pw-secret-7",
                     "sender": "a@example.com", "recipients": ["b@example.com"]}}},
    })
    admin = Admin(gateway.url)
    answer = admin.get("/config")
    text = orjson.dumps(answer).decode()
    for secret in (ADMIN_KEY, UPSTREAM_KEY, "hdr-secret-123", "tok-secret-9", "pw-secret-7"):
        assert secret not in text
    config = answer["config"]
    assert config["server"]["admin_key"] == "[redacted]"
    assert config["upstreams"]["openai"]["api_key"] == "[redacted]"
    assert config["upstreams"]["openai"]["base_url"] == fake.v1
    assert config["alerting"]["channels"]["ops"]["url"] == "https://hooks.example/[redacted]"
    assert answer["status"]["generation"] == 1


def test_store_urls_keep_all_but_their_passwords() -> None:
    assert redact_url("redis://:pw@h:6379/0?prefix=a") == "redis://:[redacted]@h:6379/0?prefix=a"
    assert redact_url("postgresql://u:p@h/db") == "postgresql://u:[redacted]@h/db"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact_url("memory://") == "memory://"


def test_entities_show_their_limits_and_switches(make_gateway: Any) -> None:
    gateway = make_gateway({
        "server": {"admin_key": ADMIN_KEY},
        "organization": {"name": "acme", "monthly_budget": 1_000_000},
        "projects": {"search": {"daily_limit": 5000}, "old": {"enabled": False}},
        "users": {"tier_premium": {"daily_limit": 700}},
        "features": {"chat": {"max_output": 300}},
        "limits": [{"name": "core-team", "scope": "team", "match": "core", "amount": 9,
                    "unit": "usd"}],
    })
    admin = Admin(gateway.url)
    gateway.key(project="search", user="alice", team="core", tier="premium")
    [org] = admin.get("/organizations")["data"]
    assert org["name"] == "acme"
    assert [lim["name"] for lim in org["limits"]] == ["organization.monthly_budget"]
    projects = {p["name"]: p for p in admin.get("/projects")["data"]}
    assert projects["old"]["enabled"] is False and projects["old"]["file_enabled"] is False
    assert projects["search"]["limits"][0]["amount"] == 5000
    [team] = admin.get("/teams")["data"]
    assert team["name"] == "core" and team["limits"][0]["amount"] == 9.0
    [tier] = admin.get("/tiers")["data"]
    assert tier["name"] == "tier_premium" and tier["limits"][0]["amount"] == 700
    [user] = admin.get("/users")["data"]
    assert user == {"name": "alice", "tiers": ["premium"], "projects": ["search"], "keys": 1}
    [feature] = admin.get("/features")["data"]
    assert feature["limits"][0]["name"] == "features.chat.max_output"
    # a runtime switch turns a file-disabled project back on
    admin.call("PUT", "/overrides/switch/project/old", {"enabled": True})
    projects = {p["name"]: p for p in admin.get("/projects")["data"]}
    assert projects["old"]["enabled"] is True and projects["old"]["file_enabled"] is False
