"""Budget alerts from a running gateway reach a real webhook, once per threshold."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle, WebhookReceiver


async def test_thresholds_and_the_block_alert_fire_once_each(
        make_gateway: Any, fake: FakeHandle, webhook: WebhookReceiver) -> None:
    url, received = webhook.url, webhook.bodies
    gateway = make_gateway({
        "alerting": {"channels": {"ops": {"kind": "webhook", "url": url}},
                     "anomaly": False, "projection": False, "daily_summary": False},
        "limits": [{"name": "daily", "scope": "project", "window": "day", "unit": "tokens",
                    "amount": 100, "thresholds": [
                        {"threshold": 0.5, "action": "warn", "channels": ["ops"]},
                        {"threshold": 1.0, "action": "block", "channels": ["ops"]}]}],
    })
    api = openai.AsyncOpenAI(base_url=gateway.v1, api_key=gateway.key(project="p"),
                             max_retries=0)
    hello = [{"role": "user", "content": "hi"}]
    await api.chat.completions.create(  # 58 of 100 tokens: past the 50 % threshold
        model="gpt-4o-mini", max_tokens=50,
        messages=[{"role": "user", "content": "hi [[fake:output_tokens=50]]"}])
    await api.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=2)
    with pytest.raises(openai.RateLimitError):
        await api.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=90)
    with pytest.raises(openai.RateLimitError):
        await api.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=90)
    await api.close()
    for _ in range(100):
        if len(received) >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    keys = sorted(alert["dedupe_key"] for alert in received)
    assert len(keys) == 2, received
    assert keys[0].startswith("budget:daily:p:") and keys[0].endswith(":0.5")
    assert keys[1] == "budget:daily:p:" + keys[1].split(":")[3] + ":1"
    records = await asyncio.to_thread(
        gateway.run, gateway.runtime.alerts.recent(10))
    assert len(records) == 2
