"""A gateway with an admin key, budgets and a month of usage; a logged-in HTTP client."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
import requests

from tests.conftest import Gateway
from tokenstile.clock import FakeClock
from tokenstile.types import LedgerRow

ADMIN_KEY = "adm-dash-0123456789abcdef0123456789"
CHAT = [{"role": "user", "content": "hello there"}]
CONFIG: dict[str, Any] = {
    "server": {"admin_key": ADMIN_KEY, "timezone": "UTC"},
    "organization": {"daily_budget_usd": 40, "monthly_budget_usd": 600},
    "projects": {"search": {"daily_budget_usd": 20, "monthly_limit": 50_000_000},
                 "support": {"daily_limit": 4_000_000}, "batch": {}},
    "features": {"chat": {"max_output": 4000}, "summarize": {"daily_budget_usd": 5}},
    "alerts": [{"threshold": 0.5}, {"threshold": 0.75}, {"threshold": 0.9}],
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


NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
DAY_START = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


class Traffic:
    """A gateway at a fixed time with a month of synthetic usage, two project keys, and a
    few real requests sent through the openai SDK."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.search = gateway.key(project="search", user="alice", name="search app")
        self.support = gateway.key(project="support", user="bob", name="support bot")
        gateway.run(gateway.runtime.db.insert_ledger(synthetic_rows(NOW.timestamp())))
        for _ in range(3):
            chat(gateway, self.search, feature="chat")
        chat(gateway, self.support, model="gpt-4o")
        wait_for_rows(gateway, 4)
        gateway.settle_wait()  # the counters the budgets show, final too

    def rows(self, **filters: Any) -> list[LedgerRow]:
        return self.gateway.rows(**filters)


def wait_for_rows(gateway: Gateway, count: int, timeout: float = 10.0) -> list[LedgerRow]:
    """The rows of real requests, once ``count`` of them are written (a row is handed to
    the ledger writer just after its answer is sent, so a test can be there first)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in gateway.rows() if not r.id.startswith("syn-")]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def totals(rows: Iterable[LedgerRow], since: float | None = None,
           project: str | None = None) -> dict[str, int]:
    """What the dashboard must report for these rows, computed here from the ledger."""
    picked = [r for r in rows if (since is None or r.ts >= since)
              and (project is None or r.project == project)]
    return {"requests": len(picked), "cost_nano": sum(r.cost_nano for r in picked),
            "tokens": sum(r.input_tokens + r.output_tokens for r in picked),
            "blocked": sum(r.outcome == "blocked" for r in picked)}


def grouped(rows: Iterable[LedgerRow], column: str, since: float) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for row in rows:
        if row.ts >= since:
            key = getattr(row, column)
            out[key] = out.get(key, 0) + row.cost_nano
    return out


@pytest.fixture
def traffic(make_gateway: Any) -> Traffic:
    return Traffic(make_gateway(CONFIG, clock=FakeClock(NOW)))


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
