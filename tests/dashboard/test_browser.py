"""The dashboard in real headless Chromium (Debian's, driven by Playwright): log in, read
the overview and compare it with the ledger, filter flagged requests, switch a project off
and see its requests refused, create and revoke a key, look around as a project key.

Every page is saved as a screenshot under ``artifacts/screenshots/``. Playwright never
downloads a browser here: the tests use the system's Chromium and are skipped, saying why,
when there is none or it cannot start.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.conftest import Gateway
from tests.dashboard.conftest import ADMIN_KEY, DAY_START, MONTH_START, NOW, Traffic, chat, totals
from tests.dashboard.test_metrics_summary import queued
from tokenstile.admin.dashboard_charts import money

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install -e .[test])")

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
Page = Any


def chromium_path() -> str | None:
    for candidate in (os.environ.get("TOKENSTILE_CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome"):
        if candidate and (found := shutil.which(candidate) or
                          (candidate if Path(candidate).is_file() else None)):
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run does)")
    with playwright_api.sync_playwright() as p:
        try:
            launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except playwright_api.Error as exc:
            pytest.skip(f"Chromium at {executable} cannot start here: {exc}")
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())  # confirm() before revoking, switching
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert errors == [], errors


def shot(tab: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(tab: Page, base: str, key: str, start: str = "/dashboard/") -> None:
    tab.goto(base + start)
    assert "/dashboard/login" in tab.url
    tab.get_by_label("Admin key or project key").fill(key)
    tab.get_by_role("button", name="Log in").click()
    tab.wait_for_url(f"{base}{start}*")


def test_log_in_and_the_overview_matches_the_ledger(traffic: Traffic, page: Page) -> None:
    gw = traffic.gateway
    # a tight daily amount, so the budget bars and alerts have something to show
    requests.put(f"{gw.url}/admin/overrides/limit/organization.daily_budget_usd", timeout=10,
                 json={"amount": 0.0002}, headers={"authorization": f"Bearer {ADMIN_KEY}"}
                 ).raise_for_status()
    page.goto(gw.url + "/dashboard/")
    shot(page, "login")
    log_in(page, gw.url, ADMIN_KEY)
    rows = traffic.rows()
    today, month = totals(rows, DAY_START), totals(rows, MONTH_START)
    for card, expected in (("#kpi-today", today), ("#kpi-month", month)):
        value = page.locator(f"{card} .value")
        assert int(value.get_attribute("data-nano") or -1) == expected["cost_nano"]
        assert value.inner_text() == money(expected["cost_nano"] / 1e9)
        assert int(page.locator(f"{card} [data-requests]").get_attribute("data-requests")
                   or -1) == expected["requests"]
        assert int(page.locator(f"{card} [data-tokens]").get_attribute("data-tokens")
                   or -1) == expected["tokens"]
    assert page.locator("#kpi-projected .value").inner_text().startswith("$")
    assert page.locator("#kpi-daily .value").inner_text() == "84 %"
    assert "organization.daily_budget_usd at 84 %" in page.locator(".alerts").first.inner_text()
    assert page.locator("svg.chart").count() == 2
    assert page.get_by_role("img", name="Spend per hour, last 48 hours").count() == 1
    assert page.get_by_role("navigation", name="Dashboard pages").is_visible()
    shot(page, "overview")
    page.emulate_media(color_scheme="dark")
    shot(page, "overview-dark")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "overview-mobile")


def test_breakdown_tables_sort_and_charts_show(traffic: Traffic, page: Page) -> None:
    gw = traffic.gateway
    log_in(page, gw.url, ADMIN_KEY, "/dashboard/breakdown?by=model&range=30d")
    table = page.locator("#breakdown-table")
    table.get_by_role("button", name="Requests").click()
    counts = [int(v) for v in table.locator("tbody td:nth-child(2)").evaluate_all(
        "cells => cells.map(c => c.dataset.value)")]
    assert counts == sorted(counts, reverse=True) and len(counts) == 3
    assert table.locator("thead th").nth(1).get_attribute("aria-sort") == "descending"
    table.get_by_role("button", name="Requests").click()
    counts = [int(v) for v in table.locator("tbody td:nth-child(2)").evaluate_all(
        "cells => cells.map(c => c.dataset.value)")]
    assert counts == sorted(counts)
    shot(page, "breakdown-model")
    page.get_by_role("radio", name="User").check()  # the dimension switch submits itself
    page.wait_for_url("**by=user**")
    assert page.locator("#breakdown-table tbody tr").count() >= 5
    shot(page, "breakdown-user")


def test_flagged_requests_filter_and_open(traffic: Traffic, page: Page) -> None:
    gw = traffic.gateway
    log_in(page, gw.url, ADMIN_KEY, "/dashboard/flagged")
    shot(page, "flagged")
    page.get_by_role("link", name="Blocked").click()
    page.wait_for_url("**kind=blocked**")
    kinds = page.locator("#flagged-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.kinds)")
    assert kinds and all("blocked" in k.split() for k in kinds)
    expected = [r for r in traffic.rows() if r.outcome == "blocked"
                and r.ts >= gw.runtime.clock.now() - 30 * 86400]
    assert len(kinds) == min(len(expected), 50)
    page.locator("#f-project").select_option("support")
    page.get_by_label("Reason contains").fill("budget")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**project=support**")
    rows = page.locator("#flagged-table tbody tr")
    assert rows.count() == len([r for r in expected if r.project == "support"])
    shot(page, "flagged-filtered")
    rows.first.get_by_role("link").click()
    page.wait_for_url("**/dashboard/requests/**")
    assert page.get_by_role("heading", name="Why").is_visible()
    assert "budget:" in page.locator(".reasons-list").first.inner_text()
    shot(page, "request")


def test_a_kill_switch_refuses_requests_at_once(traffic: Traffic, page: Page) -> None:
    gw = traffic.gateway
    chat(gw, traffic.search)
    log_in(page, gw.url, ADMIN_KEY, "/dashboard/budgets")
    row = page.locator('tr[data-switch="project:search"]')
    row.get_by_label("Reason for switching off project search").fill("runaway loop")
    row.get_by_role("button", name="Switch off").click()
    page.wait_for_url("**done=switch_off**")
    assert "Project search is switched off" in page.get_by_role("status").inner_text()
    assert row.locator(".state-off").is_visible()
    shot(page, "budgets-switched-off")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(gw, traffic.search)
    assert "switched off" in refused.value.message and "runaway loop" in refused.value.message
    chat(gw, traffic.support)  # other projects go on
    row.get_by_role("button", name="Switch on").click()
    page.wait_for_url("**done=switch_on**")
    chat(gw, traffic.search)
    shot(page, "budgets")


def test_create_a_key_see_it_once_and_revoke_it(dash: Gateway, page: Page) -> None:
    log_in(page, dash.url, ADMIN_KEY, "/dashboard/keys")
    page.get_by_label("Project").fill("search")
    page.get_by_label("User").fill("zoe")
    page.get_by_label("Name").fill("nightly report")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("ts-")
    assert "only time it is shown" in page.locator("#created").inner_text()
    shot(page, "keys-created")
    assert chat(dash, secret).choices
    page.goto(dash.url + "/dashboard/keys")
    assert secret not in page.content()
    row = page.locator("tr", has_text="nightly report")
    row.get_by_role("button", name="Revoke").click()
    page.wait_for_url("**done=revoked**")
    assert page.locator("tr", has_text="nightly report").locator(".state-off").is_visible()
    with pytest.raises(openai.AuthenticationError):
        chat(dash, secret)
    shot(page, "keys")


def test_a_project_key_sees_its_project_read_only(traffic: Traffic, page: Page) -> None:
    gw = traffic.gateway
    log_in(page, gw.url, traffic.support)
    assert "read-only" in page.locator(".who").inner_text()
    expected = totals(traffic.rows(), MONTH_START, project="support")
    value = page.locator("#kpi-month .value")
    assert int(value.get_attribute("data-nano") or -1) == expected["cost_nano"]
    projects = page.locator("table", has_text="Project").first.locator("tbody th")
    assert projects.all_inner_texts() == ["support"]
    shot(page, "project-overview")
    page.get_by_role("link", name="Budgets").click()
    assert page.get_by_role("button", name="Switch off").count() == 0
    shot(page, "project-budgets")
    status = page.evaluate("""async () => {
        const token = document.querySelector('meta[name=csrf-token]').content;
        const body = new URLSearchParams({csrf: token, scope: 'project', name: 'support',
                                          enabled: 'false'});
        const answer = await fetch('/dashboard/budgets/switch', {method: 'POST', body});
        return answer.status;
    }""")
    assert status == 403
    chat(gw, traffic.support)


def test_recommendations_page(traffic: Traffic, page: Page) -> None:
    log_in(page, traffic.gateway.url, ADMIN_KEY, "/dashboard/recommendations")
    assert page.get_by_role("heading", name="Recommendations").is_visible()
    shot(page, "recommendations")


def test_the_key_metrics_panel_shows_the_summary(traffic: Traffic, page: Page) -> None:
    gw = traffic.gateway
    queued(traffic)  # three requests paced by a throttle, one refused by it
    summary = requests.get(f"{gw.url}/admin/metrics/summary", timeout=10,
                           headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    day = totals(traffic.rows(), NOW.timestamp() - 86400)
    assert summary["token_burn_rate"]["tokens_per_day"] == day["tokens"]
    log_in(page, gw.url, ADMIN_KEY)
    panel = page.get_by_role("region", name="Key metrics, last 24 hours")
    assert panel.is_visible()

    def attr(selector: str, name: str) -> float:
        return float(panel.locator(selector).get_attribute(name) or "nan")

    assert attr("[data-tokens-per-hour]", "data-tokens-per-hour") == \
        summary["token_burn_rate"]["tokens_per_hour"]
    assert attr("[data-tokens-per-day]", "data-tokens-per-day") == day["tokens"]
    assert attr("#metric-per-interaction .value", "data-tokens") == \
        summary["cost_per_interaction"]["tokens"]
    assert attr("#metric-limit-hits .value", "data-rate") == summary["limit_hit_rate"]["rate"]
    assert attr("[data-hits]", "data-hits") == summary["limit_hit_rate"]["limit_hits"]
    assert panel.locator("#metric-limit-hits .value").inner_text().endswith("%")
    assert attr("#metric-queue .value", "data-current") == 0
    assert attr("[data-queued]", "data-queued") == 3
    assert "1 refused" in panel.locator("#metric-queue").inner_text()
    assert summary["limit_hit_rate"]["limit_hits"] >= 1
    models = panel.locator("#metric-models tbody th").all_inner_texts()
    assert models == [m["name"] or "(none)" for m in summary["model_distribution"]][:6]
    users = panel.locator("#metric-users tbody td.num").evaluate_all(
        "cells => cells.map(c => Number(c.dataset.value))")
    assert users == [u["tokens"] for u in summary["top_users"]][:6]
    assert users == sorted(users, reverse=True)
    panel.screenshot(path=str(SHOTS / "key-metrics.png"))
