"""``GET /api/dashboard`` and the dashboard's JSON twins: the seed's shape, the ledger's
numbers, and a project key held to its own project."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.dashboard.conftest import (
    ADMIN_KEY,
    DAY_START,
    MONTH_START,
    NOW,
    Traffic,
    grouped,
    totals,
)
from tokenstile.admin.dashboard_api import ENDPOINTS
from tokenstile.alerts.engine import month_forecast
from tokenstile.types import nano_to_usd

TWINS = ["/admin/dashboard", "/admin/dashboard/breakdown", "/admin/dashboard/flagged",
         "/admin/dashboard/budgets", "/admin/dashboard/keys",
         "/admin/dashboard/recommendations"]


def get(traffic: Traffic, path: str, key: str = ADMIN_KEY, expect: int = 200,
        **params: Any) -> Any:
    answer = requests.get(traffic.gateway.url + path, params=params or None, timeout=20,
                          headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == expect, (path, answer.status_code, answer.text[:500])
    return answer.json()


def by_name(items: list[dict[str, Any]]) -> dict[Any, int]:
    return {item["name"]: item["cost_nano"] for item in items}


def test_the_seed_shape_with_the_ledgers_numbers(traffic: Traffic) -> None:
    rows = traffic.rows()
    answer = get(traffic, "/api/dashboard")
    assert set(answer) >= {"current_usage", "limits", "breakdown", "alerts",
                           "recommendations"}
    usage = answer["current_usage"]
    assert set(usage) == {"today", "this_month", "projected_monthly"}
    for name, since in (("today", DAY_START), ("this_month", MONTH_START)):
        expected = totals(rows, since)
        got = {k: usage[name][k] for k in expected}
        assert got == expected, name
        assert usage[name]["cost_usd"] == nano_to_usd(expected["cost_nano"])
    assert totals(rows, DAY_START)["requests"] >= 4  # the SDK's requests are in today

    forecast = traffic.gateway.run(month_forecast(
        traffic.gateway.runtime.db, NOW.timestamp(), "UTC", unit="usd",
        budget=600 * 10**9))
    projected = usage["projected_monthly"]
    assert projected["cost_usd"] == nano_to_usd(round(forecast.projected_total))
    assert projected["cost_low_usd"] <= projected["cost_usd"] <= projected["cost_high_usd"]
    assert projected["cost_usd"] >= usage["this_month"]["cost_usd"]

    limits = answer["limits"]
    assert set(limits) == {"daily", "monthly", "utilization"}
    assert limits["daily"]["name"] == "organization.daily_budget_usd"
    assert limits["monthly"]["name"] == "organization.monthly_budget_usd"
    assert limits["daily"]["amount_usd"] == 40
    assert limits["utilization"] == {"daily": limits["daily"]["utilization"],
                                     "monthly": limits["monthly"]["utilization"]}
    # counters hold what went through the gateway: the four SDK requests
    sdk = [r for r in rows if not r.id.startswith("syn-")]
    assert limits["daily"]["used"] == sum(r.cost_nano for r in sdk)
    assert limits["daily"]["utilization"] == pytest.approx(
        sum(r.cost_nano for r in sdk) / (40 * 10**9), abs=1e-6)

    breakdown = answer["breakdown"]
    assert set(breakdown) == {"by_project", "by_model", "by_user"}
    assert by_name(breakdown["by_project"]) == grouped(rows, "project", MONTH_START)
    assert by_name(breakdown["by_model"]) == grouped(rows, "served_model", MONTH_START)
    assert by_name(breakdown["by_user"]) == grouped(rows, "user", MONTH_START)
    shares = [item["share"] for item in breakdown["by_project"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    assert isinstance(answer["alerts"], list)
    assert isinstance(answer["recommendations"], list)
    assert len(answer["burn_rate"]["hourly"]) == 48
    assert len(answer["burn_rate"]["daily"]) == 30
    assert sum(d["cost_nano"] for d in answer["burn_rate"]["daily"]) == \
        usage["this_month"]["cost_nano"]


def test_the_admin_twin_is_the_same_answer(traffic: Traffic) -> None:
    one = get(traffic, "/api/dashboard")
    two = get(traffic, "/admin/dashboard")
    assert one == two


def test_a_project_key_sees_its_own_project_only(traffic: Traffic) -> None:
    rows = traffic.rows()
    mine = get(traffic, "/api/dashboard", key=traffic.support)
    assert mine["scope"] == {"organization": "default", "project": "support"}
    for name, since in (("today", DAY_START), ("this_month", MONTH_START)):
        expected = totals(rows, since, project="support")
        assert {k: mine["current_usage"][name][k] for k in expected} == expected
    assert [p["name"] for p in mine["breakdown"]["by_project"]] == ["support"]
    assert {b["scope"] for b in mine["budgets"]} == {"project"}
    assert {b["scope_id"] for b in mine["budgets"]} == {"support"}
    assert mine["limits"]["daily"]["name"] == "projects.support.daily_limit"
    assert mine["limits"]["monthly"] is None
    # the admin asking for the same project gets the same numbers
    admin_view = get(traffic, "/api/dashboard", project="support")
    assert admin_view["current_usage"] == mine["current_usage"]
    assert admin_view["breakdown"] == mine["breakdown"]
    # and the key cannot look elsewhere, nor use the rest of the admin API
    refused = get(traffic, "/api/dashboard", key=traffic.support, expect=403,
                  project="search")
    assert refused["error"]["code"] == "other_project"
    get(traffic, "/api/dashboard", key=traffic.support, expect=403, organization="other")
    assert get(traffic, "/admin/keys", key=traffic.support, expect=403)["error"]["code"] == \
        "not_admin"
    bad = get(traffic, "/api/dashboard", key="ts-not-a-real-key", expect=401)
    assert bad["error"]["code"] == "invalid_key"
    assert get(traffic, "/api/dashboard", key="wrong", expect=401)["error"]["code"] == \
        "invalid_admin_key"


def test_every_twin_answers_admins_and_project_keys(traffic: Traffic) -> None:
    for path in TWINS:
        assert get(traffic, path) is not None
        assert get(traffic, path, key=traffic.search) is not None
        answer = requests.get(traffic.gateway.url + path, timeout=10)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "missing_admin_key"
    keys = get(traffic, "/admin/dashboard/keys", key=traffic.search)
    assert {k["project"] for k in keys["data"]} == {"search"}
    assert all("key" not in k and "hash" not in k for k in keys["data"])


@pytest.mark.parametrize(("by", "column"), [("project", "project"), ("model", "served_model"),
                                            ("user", "user"), ("feature", "feature"),
                                            ("team", "team")])
def test_breakdowns_match_the_ledger(traffic: Traffic, by: str, column: str) -> None:
    rows = traffic.rows()
    since = NOW.timestamp() - 7 * 86400
    answer = get(traffic, "/admin/dashboard/breakdown", by=by, range="7d")
    assert answer["since"] == since
    assert by_name(answer["data"]) == grouped(rows, column, since)
    assert answer["total"]["cost_nano"] == sum(grouped(rows, column, since).values())
    series = answer["series"]
    assert series["bucket"] == "day" and len(series["labels"]) == 8
    drawn = sum(sum(g["cost_usd"]) for g in series["groups"])
    assert drawn == pytest.approx(nano_to_usd(answer["total"]["cost_nano"]), rel=1e-9)


def test_the_tag_breakdown_counts_each_tag(traffic: Traffic) -> None:
    rows = traffic.rows()
    answer = get(traffic, "/admin/dashboard/breakdown", by="tag", range="month")
    expected: dict[str, int] = {}
    for row in rows:
        if row.ts >= MONTH_START:
            for key, value in row.tags.items():
                expected[f"{key}={value}"] = expected.get(f"{key}={value}", 0) + row.cost_nano
    assert by_name(answer["data"]) == expected
    assert answer["available"] is True


def test_flagged_requests_by_kind(traffic: Traffic) -> None:
    rows = [r for r in traffic.rows() if r.ts >= NOW.timestamp() - 30 * 86400]
    answer = get(traffic, "/admin/dashboard/flagged", limit=1000)
    blocked = {r.id for r in rows if r.outcome == "blocked"}
    degraded = {r.id for r in rows if r.degraded}
    assert answer["counts"]["blocked"] == len(blocked) > 0
    assert answer["counts"]["degraded"] == len(degraded) > 0
    assert {i["id"] for i in answer["data"]} == blocked | degraded
    only = get(traffic, "/admin/dashboard/flagged", kind="degraded", limit=1000)
    assert {i["id"] for i in only["data"]} == degraded
    assert all("degraded:trimmed" in i["reasons"] for i in only["data"])
    times = [i["ts"] for i in answer["data"]]
    assert times == sorted(times, reverse=True)
    mine = get(traffic, "/admin/dashboard/flagged", key=traffic.search, limit=1000)
    assert {i["project"] for i in mine["data"]} == {"search"}
    other = next(r for r in rows if r.outcome == "blocked" and r.project != "search")
    detail = get(traffic, f"/admin/dashboard/requests/{other.id}")
    assert detail["kinds"] == ["blocked"] and detail["block_reason"] == other.block_reason
    get(traffic, f"/admin/dashboard/requests/{other.id}", key=traffic.search, expect=404)


def test_the_openapi_document_lists_the_twins_for_project_keys(traffic: Traffic) -> None:
    doc = get(traffic, "/admin/openapi.json")
    for endpoint in ENDPOINTS:
        path = "/admin" + endpoint.path
        operation = doc["paths"][path][endpoint.method.lower()]
        assert {"projectKey": []} in operation["security"], path
    assert doc["components"]["securitySchemes"]["projectKey"]["scheme"] == "bearer"


def test_the_overview_answers_when_the_forecast_fails(traffic: Traffic,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenstile.admin import dashboard_data

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("math domain error")

    monkeypatch.setattr(dashboard_data, "forecast_period", broken)
    answer = get(traffic, "/api/dashboard")
    projected = answer["current_usage"]["projected_monthly"]
    month = answer["current_usage"]["this_month"]
    assert projected["method"] == "straight-line"
    elapsed = (NOW.timestamp() - MONTH_START) / 86400
    assert projected["cost_usd"] == pytest.approx(month["cost_usd"] / elapsed * 30, rel=1e-6)
