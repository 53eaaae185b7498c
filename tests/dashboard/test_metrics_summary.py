"""``GET /admin/metrics/summary``: the article's ratio metrics (token burn rate, cost per
interaction, limit hit rate, queue depth, model distribution, top users) over a window,
each checked against figures computed here from the ledger's rows."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.dashboard.conftest import ADMIN_KEY, NOW, Traffic
from tokenstile.types import LedgerRow, nano_to_usd

T = NOW.timestamp()


def get(traffic: Traffic, key: str = ADMIN_KEY, expect: int = 200, **params: Any) -> Any:
    answer = requests.get(traffic.gateway.url + "/admin/metrics/summary", timeout=20,
                          params=params or None, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == expect, answer.text[:500]
    return answer.json()


def queued(traffic: Traffic) -> list[LedgerRow]:
    """Requests that waited in a throttle queue, and one refused for a queue too long."""
    rows = [LedgerRow(id=f"q-{i}", ts=T - 600 * (i + 1), organization="default",
                      project="search", user="zoe", served_model="gpt-4o-mini",
                      input_tokens=100, output_tokens=10, cost_nano=21_000,
                      degraded=["throttled"], detail={"queue_ms": wait})
            for i, wait in enumerate((1200, 300, 4500))]
    rows.append(LedgerRow(id="q-refused", ts=T - 60, organization="default",
                          project="search", user="zoe", status=429, outcome="blocked",
                          block_reason="throttled:projects.search.daily_budget_usd"))
    traffic.gateway.run(traffic.gateway.runtime.db.insert_ledger(rows))
    return rows


def expected(rows: list[LedgerRow], seconds: int) -> dict[str, Any]:
    picked = [r for r in rows if r.ts >= T - seconds]
    tokens = sum(r.input_tokens + r.output_tokens for r in picked)
    cost = sum(r.cost_nano for r in picked)
    served = [r for r in picked if r.outcome != "blocked"]
    hits = [r for r in picked if r.outcome == "blocked" and r.status == 429]
    models: dict[Any, int] = {}
    users: dict[Any, int] = {}
    for r in picked:
        models[r.served_model] = models.get(r.served_model, 0) + r.input_tokens + r.output_tokens
        users[r.user] = users.get(r.user, 0) + r.input_tokens + r.output_tokens
    return {"requests": len(picked), "tokens": tokens, "cost": cost, "served": len(served),
            "hits": len(hits), "models": models, "users": users}


def test_the_summary_is_the_ledgers_ratios(traffic: Traffic) -> None:
    added = queued(traffic)
    rows = traffic.rows()
    assert {r.id for r in added} <= {r.id for r in rows}
    answer = get(traffic)
    want = expected(rows, 86400)
    assert answer["window"] == "24h" and answer["window_seconds"] == 86400
    assert answer["since"] == T - 86400 and answer["until"] == T

    burn = answer["token_burn_rate"]
    assert burn["tokens_per_hour"] == round(want["tokens"] / 24, 3)
    assert burn["tokens_per_day"] == want["tokens"]
    assert burn["usd_per_day"] == pytest.approx(nano_to_usd(want["cost"]))

    per = answer["cost_per_interaction"]
    assert per["requests"] == want["served"] < want["requests"]
    assert per["tokens"] == round(want["tokens"] / want["served"], 3)
    assert per["cost_nano"] == round(want["cost"] / want["served"])

    hit = answer["limit_hit_rate"]
    assert (hit["limit_hits"], hit["requests"]) == (want["hits"], want["requests"])
    assert hit["rate"] == round(want["hits"] / want["requests"], 6) and hit["limit_hits"] >= 1
    assert {"limit": "throttled:projects.search.daily_budget_usd", "hits": 1} in \
        hit["by_limit"]
    assert sum(item["hits"] for item in hit["by_limit"]) == want["hits"]

    queue = answer["queue_depth"]
    assert queue == {"current": 0, "queued_requests": 3, "max_wait_ms": 4500,
                     "average_wait_ms": 2000.0, "average": round(6.0 / 86400, 6),
                     "refused": 1, "complete": True}

    models = answer["model_distribution"]
    assert {m["name"]: m["tokens"] for m in models} == want["models"]
    assert [m["tokens"] for m in models] == sorted(want["models"].values(), reverse=True)
    assert sum(m["share"] for m in models) == pytest.approx(1.0, abs=1e-5)

    users = answer["top_users"]
    ranked = sorted(want["users"].values(), reverse=True)
    assert [u["tokens"] for u in users] == ranked[:10]
    assert users[0]["share"] == round(ranked[0] / want["tokens"], 6)


def test_a_window_and_a_scope(traffic: Traffic) -> None:
    rows = traffic.rows()
    week = get(traffic, window="7d", project="search", top=2)
    want = expected([r for r in rows if r.project == "search"], 7 * 86400)
    assert week["scope"] == {"organization": None, "project": "search"}
    assert week["token_burn_rate"]["tokens_per_day"] == round(want["tokens"] / 7, 3)
    assert week["limit_hit_rate"]["limit_hits"] == want["hits"]
    assert len(week["top_users"]) == 2
    hour = get(traffic, window="90m")
    assert hour["window_seconds"] == 5400


@pytest.mark.parametrize("window", ["abc", "0h", "24", "1y", "401d"])
def test_a_window_that_cannot_be_read_is_refused(traffic: Traffic, window: str) -> None:
    answer = get(traffic, expect=422, window=window)
    assert "window" in answer["error"]["message"]


def test_only_the_admin_key_may_ask(traffic: Traffic) -> None:
    get(traffic, key=traffic.search, expect=403)
    get(traffic, key="wrong", expect=401)
