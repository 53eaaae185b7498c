"""The dashboard over plain HTTP: login, the session cookie, CSRF on every change, read-only
project sessions, and every page showing its JSON twin's numbers."""

from __future__ import annotations

import html
import re
from typing import Any

import openai
import pytest
import requests

from tests.conftest import Gateway
from tests.dashboard.conftest import (
    ADMIN_KEY,
    CONFIG,
    Traffic,
    chat,
    csrf_of,
    login,
    wait_for_rows,
)
from tests.limits.test_multiprocess import free_port
from tokenstile.admin import dashboard_session
from tokenstile.clock import FakeClock


def page(session: requests.Session, url: str, expect: int = 200) -> str:
    answer = session.get(url, timeout=20, allow_redirects=False)
    assert answer.status_code == expect, (url, answer.status_code, answer.text[:800])
    return answer.text


def twin(session: requests.Session, base: str, text: str) -> Any:
    """The JSON twin a page links to, fetched with the page's own session."""
    found = re.search(r'href="([^"]+)" data-json', text)
    assert found, "the page links no JSON twin"
    answer = session.get(base + html.unescape(found.group(1)), timeout=20)
    assert answer.status_code == 200, answer.text
    return answer.json()


def post(session: requests.Session, url: str, data: dict[str, str], expect: int = 303
         ) -> requests.Response:
    answer = session.post(url, data=data, timeout=20, allow_redirects=False)
    assert answer.status_code == expect, (url, answer.status_code, answer.text[:800])
    return answer


# --- login and the cookie -----------------------------------------------------------------


def test_login_sets_a_signed_httponly_strict_expiring_cookie(dash: Gateway) -> None:
    session = requests.Session()
    form = session.get(f"{dash.url}/dashboard/login", timeout=10)
    assert 'type="password"' in form.text and 'autocomplete="current-password"' in form.text
    answer = session.post(f"{dash.url}/dashboard/login", allow_redirects=False, timeout=10,
                          data={"key": ADMIN_KEY, "csrf": csrf_of(form.text),
                                "next": "/dashboard/budgets"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/budgets"
    cookies = [c for c in answer.raw.headers.getlist("set-cookie")
               if c.startswith(dashboard_session.COOKIE + "=")]
    assert len(cookies) == 1
    cookie = cookies[0].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert f"max-age={dashboard_session.SESSION_S}" in cookie
    assert "secure" not in cookie  # plain HTTP here; HTTPS adds it
    assert ADMIN_KEY not in cookies[0]
    assert "Budgets" in page(session, f"{dash.url}/dashboard/budgets")


def test_login_refuses_a_wrong_key_and_a_missing_form_token(dash: Gateway) -> None:
    session = requests.Session()
    form = session.get(f"{dash.url}/dashboard/login", timeout=10).text
    wrong = session.post(f"{dash.url}/dashboard/login", timeout=10, allow_redirects=False,
                         data={"key": ADMIN_KEY + "x", "csrf": csrf_of(form)})
    assert wrong.status_code == 401 and "not the admin key" in wrong.text
    assert dashboard_session.COOKIE not in session.cookies
    forged = requests.post(f"{dash.url}/dashboard/login", timeout=10, allow_redirects=False,
                           data={"key": ADMIN_KEY, "csrf": "made-up"})
    assert forged.status_code == 403 and dashboard_session.COOKIE not in forged.cookies
    revoked = dash.key(project="search")
    dash.run(dash.runtime.db.update_key(
        next(k.id for k in dash.run(dash.runtime.db.list_keys())), revoked_at=1.0))
    login(dash.url, revoked, expect=401)


def test_pages_send_a_stranger_to_the_login_form_and_back(dash: Gateway) -> None:
    for path in ("/dashboard/", "/dashboard/flagged?kind=blocked", "/dashboard/keys"):
        answer = requests.get(dash.url + path, timeout=10, allow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/dashboard/login?next=")
    answer = requests.get(dash.url + "/dashboard", timeout=10, allow_redirects=False)
    assert answer.headers["location"] == "/dashboard/"
    session = requests.Session()
    form = session.get(f"{dash.url}/dashboard/login?next=/dashboard/flagged%3Fkind%3Dblocked",
                       timeout=10).text
    answer = session.post(f"{dash.url}/dashboard/login", allow_redirects=False, timeout=10,
                          data={"key": ADMIN_KEY, "csrf": csrf_of(form),
                                "next": "/dashboard/flagged?kind=blocked"})
    assert answer.headers["location"] == "/dashboard/flagged?kind=blocked"
    for elsewhere in ("https://evil.example/", "//evil.example/dashboard", "/admin/keys"):
        form = session.get(f"{dash.url}/dashboard/login", timeout=10).text
        answer = session.post(f"{dash.url}/dashboard/login", allow_redirects=False,
                              timeout=10, data={"key": ADMIN_KEY, "csrf": csrf_of(form),
                                                "next": elsewhere})
        assert answer.headers["location"] == "/dashboard/", elsewhere


def test_a_forged_or_expired_cookie_is_no_session(make_gateway: Any) -> None:
    clock = FakeClock()
    gateway: Gateway = make_gateway(CONFIG, clock=clock)
    session = login(gateway.url, ADMIN_KEY)
    assert "Overview" in page(session, f"{gateway.url}/dashboard/")
    value = session.cookies[dashboard_session.COOKIE]
    payload, signature = value.split(".")
    tampered = requests.Session()
    tampered.cookies.set(dashboard_session.COOKIE, payload + "." + signature[::-1])
    page(tampered, f"{gateway.url}/dashboard/", expect=303)
    other_key = dashboard_session.encode(
        "another-admin-key", dashboard_session.new_session("admin", clock.now()))
    tampered.cookies.set(dashboard_session.COOKIE, other_key)
    page(tampered, f"{gateway.url}/dashboard/", expect=303)
    assert requests.get(f"{gateway.url}/admin/keys", timeout=10, cookies={
        dashboard_session.COOKIE: other_key}).json()["error"]["code"] == "session_expired"
    clock.advance(dashboard_session.SESSION_S + 1)
    page(session, f"{gateway.url}/dashboard/", expect=303)


def test_logout_ends_the_session(dash: Gateway, admin_web: requests.Session) -> None:
    text = page(admin_web, f"{dash.url}/dashboard/")
    post(admin_web, f"{dash.url}/dashboard/logout", {"csrf": csrf_of(text)})
    assert dashboard_session.COOKIE not in admin_web.cookies
    page(admin_web, f"{dash.url}/dashboard/", expect=303)


def test_every_answer_carries_a_strict_security_policy(dash: Gateway,
                                                       admin_web: requests.Session) -> None:
    for path in ("/dashboard/login", "/dashboard/", "/dashboard/keys"):
        answer = admin_web.get(dash.url + path, timeout=10)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
        assert "https://" not in answer.text.replace("https://evil", "")  # nothing remote
    css = admin_web.get(f"{dash.url}/dashboard/static/dashboard.css", timeout=10)
    assert css.status_code == 200 and "@import" not in css.text and "url(" not in css.text


# --- CSRF and read-only sessions ----------------------------------------------------------


def test_a_change_needs_the_pages_csrf_token(dash: Gateway, admin_web: requests.Session) -> None:
    key = dash.key(project="search")
    chat(dash, key)
    switch = {"scope": "project", "name": "search", "enabled": "false", "next": "/dashboard/"}
    post(admin_web, f"{dash.url}/dashboard/budgets/switch", switch, expect=403)
    post(admin_web, f"{dash.url}/dashboard/budgets/switch", {**switch, "csrf": "x" * 43},
         expect=403)
    assert dash.run(dash.runtime.db.list_overrides()) == []
    chat(dash, key)  # still allowed
    token = csrf_of(page(admin_web, f"{dash.url}/dashboard/budgets"))
    done = post(admin_web, f"{dash.url}/dashboard/budgets/switch", {**switch, "csrf": token})
    assert "done=switch_off" in done.headers["location"]
    [override] = dash.run(dash.runtime.db.list_overrides())
    assert (override.target, override.value, override.author) == (
        "project:search", {"enabled": False}, "admin:session")
    with pytest.raises(openai.PermissionDeniedError):
        chat(dash, key)
    notice = page(admin_web, dash.url + done.headers["location"])
    assert "Project search is switched off" in notice


def test_the_session_cookie_works_on_the_admin_api_with_its_csrf_header(
        dash: Gateway, admin_web: requests.Session) -> None:
    assert admin_web.get(f"{dash.url}/admin/keys", timeout=10).status_code == 200
    refused = admin_web.post(f"{dash.url}/admin/keys", json={"project": "search"}, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    token = csrf_of(page(admin_web, f"{dash.url}/dashboard/"))
    made = admin_web.post(f"{dash.url}/admin/keys", json={"project": "search"}, timeout=10,
                          headers={dashboard_session.CSRF_HEADER: token})
    assert made.status_code == 201


def test_a_project_key_session_is_read_only_and_sees_its_project(traffic: Traffic) -> None:
    gw = traffic.gateway
    viewer = login(gw.url, traffic.search)
    text = page(viewer, f"{gw.url}/dashboard/")
    assert "Project search · read-only" in text
    assert "Switch off" not in page(viewer, f"{gw.url}/dashboard/budgets")
    keys_page = page(viewer, f"{gw.url}/dashboard/keys")
    assert "Create key" not in keys_page and "/revoke" not in keys_page
    token = csrf_of(text)
    answer = post(viewer, f"{gw.url}/dashboard/budgets/switch", expect=403, data={
        "csrf": token, "scope": "project", "name": "support", "enabled": "false"})
    assert "read-only" in answer.text
    assert gw.run(gw.runtime.db.list_overrides()) == []
    assert viewer.get(f"{gw.url}/admin/keys", timeout=10).json()["error"]["code"] == \
        "not_admin"
    mine = viewer.get(f"{gw.url}/admin/dashboard", timeout=10).json()
    assert mine["scope"]["project"] == "search"
    # an admin-only query parameter does not widen a project session
    wider = page(viewer, f"{gw.url}/dashboard/breakdown?project=support&by=project")
    assert ">support<" not in wider
    # revoking the key ends its session
    record = next(k for k in gw.run(gw.runtime.db.list_keys()) if k.project == "search")
    gw.run(gw.runtime.db.update_key(record.id, revoked_at=gw.runtime.clock.now()))
    page(viewer, f"{gw.url}/dashboard/", expect=303)


# --- the page and its twin agree ----------------------------------------------------------


def _values(text: str, attribute: str) -> list[str]:
    return re.findall(attribute + r'="([^"]*)"', text)


def _table(text: str, table_id: str) -> list[list[str]]:
    """Each row of a table as its cells' data-value attributes."""
    body = text.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    return [re.findall(r'data-value="([^"]*)"', row) for row in rows]


def test_every_page_shows_its_twins_numbers(traffic: Traffic) -> None:
    gw = traffic.gateway
    web = login(gw.url, ADMIN_KEY)
    text = page(web, f"{gw.url}/dashboard/")
    data = twin(web, gw.url, text)
    usage = data["current_usage"]
    nanos = [int(v) for v in _values(text, "data-nano")]
    assert nanos == [usage["today"]["cost_nano"], usage["this_month"]["cost_nano"]]
    assert f'data-usd="{usage["projected_monthly"]["cost_usd"]}"' in text
    for item in data["breakdown"]["by_model"]:
        assert f'data-value="{item["cost_nano"]}"' in text

    for by in ("project", "model", "user", "feature", "team", "tag"):
        text = page(web, f"{gw.url}/dashboard/breakdown?by={by}&range=30d")
        data = twin(web, gw.url, text)
        shown = [(html.unescape(r[0]), int(r[1]), int(r[4])) for r in
                 _table(text, "breakdown-table") if r]
        assert shown == [(i["name"] or "", i["requests"], i["cost_nano"]) for i in data["data"]]

    text = page(web, f"{gw.url}/dashboard/flagged?kind=blocked&range=30d")
    data = twin(web, gw.url, text)
    assert data["kind"] == "blocked" and data["data"]
    assert re.findall(r"/dashboard/requests/([\w-]+)", text) == [i["id"] for i in data["data"]]

    text = page(web, f"{gw.url}/dashboard/budgets")
    data = twin(web, gw.url, text)
    assert [(r[0], int(r[2])) for r in _table(text, "budget-table")] == [
        (b["name"], b["used"]) for b in data["budgets"]]

    text = page(web, f"{gw.url}/dashboard/keys")
    data = twin(web, gw.url, text)
    assert _values(text, "data-key") == [k["id"] for k in data["data"]]

    text = page(web, f"{gw.url}/dashboard/recommendations")
    data = twin(web, gw.url, text)
    assert data["data"]
    for item in data["data"]:
        assert item["title"] in html.unescape(text)


def test_a_request_page_shows_what_happened(traffic: Traffic) -> None:
    gw = traffic.gateway
    web = login(gw.url, ADMIN_KEY)
    blocked = next(r for r in gw.rows() if r.outcome == "blocked")
    text = page(web, f"{gw.url}/dashboard/requests/{blocked.id}")
    assert blocked.block_reason is not None and blocked.block_reason in text
    assert "not recorded" in text  # server.log_bodies is off
    page(web, f"{gw.url}/dashboard/requests/nope", expect=404)
    viewer = login(gw.url, traffic.support)
    if blocked.project != "support":
        page(viewer, f"{gw.url}/dashboard/requests/{blocked.id}", expect=404)


def test_keys_are_created_with_the_secret_shown_once_and_revoked(
        dash: Gateway, admin_web: requests.Session) -> None:
    token = csrf_of(page(admin_web, f"{dash.url}/dashboard/keys"))
    made = admin_web.post(f"{dash.url}/dashboard/keys", timeout=10, allow_redirects=False,
                          data={"csrf": token, "project": "search", "user": "zoe",
                                "name": "nightly job"})
    assert made.status_code == 201
    secret = re.search(r'id="new-secret">([^<]+)<', made.text)
    assert secret is not None
    assert chat(dash, secret.group(1)).choices
    listing = page(admin_web, f"{dash.url}/dashboard/keys")
    assert secret.group(1) not in listing and "nightly job" in listing
    [record] = [k for k in dash.run(dash.runtime.db.list_keys()) if k.name == "nightly job"]
    post(admin_web, f"{dash.url}/dashboard/keys/{record.id}/revoke", {"csrf": token})
    with pytest.raises(openai.AuthenticationError):
        chat(dash, secret.group(1))
    bad = admin_web.post(f"{dash.url}/dashboard/keys", timeout=10, allow_redirects=False,
                         data={"csrf": token, "project": ""})
    assert bad.status_code == 422 and "not created" in bad.text


def test_budget_amounts_and_shadow_mode_from_the_budgets_page(
        dash: Gateway, admin_web: requests.Session) -> None:
    key = dash.key(project="support")
    token = csrf_of(page(admin_web, f"{dash.url}/dashboard/budgets"))
    name = "projects.support.daily_limit"
    post(admin_web, f"{dash.url}/dashboard/budgets/amount", {"csrf": token, "name": name,
                                                             "amount": "10"})
    with pytest.raises(openai.RateLimitError):
        chat(dash, key)
    post(admin_web, f"{dash.url}/dashboard/budgets/shadow", {"csrf": token, "name": name,
                                                             "shadow": "true"})
    chat(dash, key)  # counted, reported, not enforced
    text = page(admin_web, f"{dash.url}/dashboard/budgets")
    assert "file: 4,000,000" in text
    post(admin_web, f"{dash.url}/dashboard/budgets/amount", {"csrf": token, "name": name,
                                                             "action": "reset"})
    post(admin_web, f"{dash.url}/dashboard/budgets/shadow", {"csrf": token, "name": name,
                                                             "shadow": "false"})
    chat(dash, key)
    wrong = post(admin_web, f"{dash.url}/dashboard/budgets/amount", expect=404,
                 data={"csrf": token, "name": "no.such.limit", "amount": "5"})
    assert "no limit named" in wrong.text


# --- where the dashboard lives ---------------------------------------------------------------


def test_without_an_admin_key_the_dashboard_is_off(make_gateway: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENSTILE_ADMIN_KEY", raising=False)
    gateway: Gateway = make_gateway()
    text = requests.get(f"{gateway.url}/dashboard/login", timeout=10).text
    assert "The dashboard is off" in text
    answer = requests.post(f"{gateway.url}/dashboard/login", data={"key": "x"}, timeout=10)
    assert answer.status_code == 403


def test_the_dashboard_goes_with_the_admin_api_to_its_own_address(make_gateway: Any) -> None:
    port = free_port()
    gateway: Gateway = make_gateway({**CONFIG, "server": {**CONFIG["server"],
                                                          "admin_port": port}})
    assert requests.get(f"{gateway.url}/dashboard/login", timeout=10).status_code == 404
    assert requests.get(f"{gateway.url}/api/dashboard", timeout=10).status_code == 404
    admin = f"http://127.0.0.1:{port}"
    session = login(admin, ADMIN_KEY)
    assert "Overview" in page(session, f"{admin}/dashboard/")
    answer = requests.get(f"{admin}/api/dashboard", timeout=10,
                          headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200 and "current_usage" in answer.json()
    key = gateway.key(project="search")
    chat(gateway, key)
    assert wait_for_rows(gateway, 1)


def test_names_from_the_ledger_are_escaped_everywhere(dash: Gateway,
                                                       admin_web: requests.Session) -> None:
    from tokenstile.types import LedgerRow

    evil = '<img src=x onerror="alert(1)">'
    now = dash.runtime.clock.now()
    dash.run(dash.runtime.db.insert_ledger([LedgerRow(
        id="evil-1", ts=now - 60, project=evil, user=evil, feature=evil, served_model=evil,
        tags={"team": evil}, cost_nano=5, outcome="blocked", status=429, block_reason=evil,
        flags=[evil])]))
    for path in ("/dashboard/", "/dashboard/breakdown?by=user", "/dashboard/breakdown?by=tag",
                 "/dashboard/breakdown?by=model", "/dashboard/flagged",
                 "/dashboard/requests/evil-1"):
        text = page(admin_web, dash.url + path)
        assert evil not in text and "<img" not in text, path
