"""A policy's own retry count drives forwarding; a client moving from Usage Panda keeps
sending its old provider key, which is neither forwarded nor refused."""

from __future__ import annotations

from typing import Any

import openai

from tests.conftest import UPSTREAM_KEY, FakeHandle


def test_a_policy_retry_count_retries_upstream_errors(make_gateway: Any,
                                                      fake: FakeHandle) -> None:
    gateway = make_gateway({"policies": {"retries": 2},
                            "resilience": {"backoff_s": 0.01}})
    fake.fake.script(["[[fake:status=503]]", "[[fake:status=500]]", None])
    api = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(), max_retries=0)
    reply = api.chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                        messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert [r.status for r in fake.fake.tally.records] == [503, 500, 200]
    [row] = gateway.rows()
    assert [a["status"] for a in row.detail["attempts"]] == [503, 500, 200]


def test_migration_mode_accepts_the_usage_panda_header_and_ignores_the_old_key(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"auth": {"migration_mode": True}})
    key = gateway.key(project="migrated")
    api = openai.OpenAI(base_url=gateway.v1, api_key="sk-old-openai-key-of-the-client",
                        max_retries=0, default_headers={"x-usagepanda-api-key": key})
    api.chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                messages=[{"role": "user", "content": "hi"}])
    record = fake.fake.tally.last
    assert record is not None
    assert record.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    [row] = gateway.rows()
    assert row.project == "migrated"
