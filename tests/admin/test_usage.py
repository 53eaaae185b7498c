"""Usage, flagged requests, one request's row and alerts, as the admin API serves them."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.admin.conftest import ADMIN_KEY, Admin

CHAT = [{"role": "user", "content": "hello"}]


def test_usage_flagged_request_and_alerts(make_gateway: Any) -> None:
    gateway = make_gateway({"server": {"admin_key": ADMIN_KEY},
                            "projects": {"tight": {"daily_limit": 60}}})
    admin = Admin(gateway.url)
    key = gateway.key(project="tight", user="ann")
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    with pytest.raises(openai.RateLimitError):
        api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=50)
    gateway.run(gateway.runtime.ledger.flush())
    rows = admin.get("/usage", group_by=["project", "user"], bucket="day")["data"]
    assert [(r["project"], r["user"], r["requests"], r["blocked"]) for r in rows] == [
        ("tight", "ann", 2, 1)]
    assert rows[0]["cost_usd"] == rows[0]["cost_nano"] / 1e9
    csv_text = admin.get("/usage", group_by="served_model", format="csv")
    assert csv_text.splitlines()[0].startswith("served_model,requests,")
    [item] = admin.get("/flagged")["data"]
    assert item["block_reason"] == "budget:projects.tight.daily_limit"
    row = admin.get(f"/requests/{item['id']}")
    assert row["outcome"] == "blocked" and row["project"] == "tight"
    assert key not in str(row)
    assert admin.get("/usage", group_by="colour", expect=422)["error"]["code"] == \
        "invalid_query"
    spent = admin.get("/forecast", unit="tokens", project="tight")
    assert spent["spent"] == rows[0]["input_tokens"] + rows[0]["output_tokens"]
    assert admin.get("/forecast", project="other")["spent_usd"] == 0
    deadline = time.monotonic() + 5
    while not (alerts := admin.get("/alerts")["data"]):
        assert time.monotonic() < deadline, "no alert recorded for the block"
        time.sleep(0.05)
    assert "tight" in str(alerts[0])
