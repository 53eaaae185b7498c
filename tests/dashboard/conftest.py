"""A gateway with an admin key, budgets and a month of usage; a logged-in HTTP client."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from tests.conftest import Gateway
from tokenstile.types import LedgerRow

ADMIN_KEY = "adm-dash-0123456789abcdef0123456789"
CHAT = [{"role": "user", "content": "hello there"}]
CONFIG: dict[str, Any] = {
    "server": {"admin_key": ADMIN_KEY, "timezone": "UTC"},
    "organization": {"daily_budget_usd": 40, "monthly_budget_usd": 600},
    "projects": {"search": {"daily_budget_usd": 20, "monthly_limit": 50_000_000},
                 "support": {"daily_limit": 4_000_000}, "batch": {}},
    "features": {"chat": {"max_output": 4000}, "summarize": {"daily_budget_usd": 5}},
}
PROJECTS = ["search", "support", "batch"]
MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"]
USERS = ["alice", "bob", "carol", "dave", "erin"]
FEATURES = ["chat", "summarize", "search"]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def login(base: str, key: str, expect: int = 303) -> requests.Session:
    """A session logged in through the login form, as a browser does it."""
    session = requests.Session()
    form = session.get(f"{base}/dashboard/login", timeout=10)
    assert form.status_code == 200
    answer = session.post(f"{base}/dashboard/login", timeout=10, allow_redirects=False,
                          data={"key": key, "csrf": csrf_of(form.text), "next": "/dashboard/"})
    assert answer.status_code == expect, answer.text[:500]
    return session


def synthetic_rows(now: float, days: int = 40, per_day: int = 40, seed: int = 7
                   ) -> list[LedgerRow]:
    """A realistic-looking ledger: weekday rhythm, growth, a few blocked and degraded rows."""
    rng = random.Random(seed)
    rows = []
    for day in range(days, -1, -1):
        for i in range(per_day):
            ts = now - day * 86400 - rng.random() * 86400
            if ts > now - 60:
                continue
            model = rng.choices(MODELS, weights=[2, 6, 2])[0]
            tokens_in = rng.randint(200, 3000)
            tokens_out = rng.randint(20, 800)
            price_in, price_out = {"gpt-4o": (2500, 10000), "gpt-4o-mini": (150, 600),
                                   "gpt-4.1-mini": (400, 1600)}[model]
            blocked = rng.random() < 0.03
            degraded = ["trimmed"] if rng.random() < 0.04 else []
            project = rng.choices(PROJECTS, weights=[5, 3, 1])[0]
            rows.append(LedgerRow(
                id=f"syn-{day}-{i}", ts=ts, key_id="key_synthetic", organization="default",
                project=project, user=rng.choice(USERS), feature=rng.choice(FEATURES),
                tags={"env": rng.choice(["prod", "staging"])}, requested_model=model,
                served_model=model, upstream="openai",
                input_tokens=0 if blocked else tokens_in,
                output_tokens=0 if blocked else tokens_out,
                cost_nano=0 if blocked else tokens_in * price_in + tokens_out * price_out,
                status=429 if blocked else 200, outcome="blocked" if blocked else "ok",
                block_reason="budget:projects.search.daily_budget_usd" if blocked else None,
                degraded=degraded, latency_ms=rng.uniform(200, 2000)))
    return rows


@pytest.fixture
def dash(make_gateway: Any) -> Gateway:
    gateway: Gateway = make_gateway(CONFIG)
    return gateway


@pytest.fixture
def seeded(dash: Gateway) -> Gateway:
    dash.run(dash.runtime.db.insert_ledger(synthetic_rows(dash.runtime.clock.now())))
    return dash


@pytest.fixture
def admin_web(dash: Gateway) -> Iterator[requests.Session]:
    session = login(dash.url, ADMIN_KEY)
    yield session
    session.close()


def chat(gateway: Gateway, key: str, feature: str | None = None, **kwargs: Any) -> Any:
    client = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    headers = {"x-tokenstile-feature": feature} if feature else {}
    try:
        return client.chat.completions.create(model=kwargs.pop("model", "gpt-4o-mini"),
                                              messages=CHAT, max_tokens=50,
                                              extra_headers=headers, **kwargs)
    finally:
        client.close()
