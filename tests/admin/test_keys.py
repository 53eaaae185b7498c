"""Key lifecycle over the admin API: the secret once, hashed at rest, revoke, expire, rotate."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from tests.admin.conftest import Admin
from tests.conftest import Gateway

CHAT = [{"role": "user", "content": "hello"}]


def chat(gateway: Gateway, key: str) -> Any:
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    return api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)


def test_create_use_list_show_revoke(admin: Admin, admin_gateway: Gateway) -> None:
    created = admin.call("POST", "/keys", {
        "project": "search", "user": "alice", "team": "core", "tier": "premium",
        "feature": "summarize", "name": "alice laptop", "allowed_models": ["gpt-4o*"],
    }, expect=201)
    secret = created["key"]
    assert secret.startswith("ts-") and created["prefix"] == secret[:7]
    assert created["state"] == "active" and created["organization"] == "default"
    chat(admin_gateway, secret)
    [row] = admin_gateway.rows()
    assert (row.key_id, row.project, row.user, row.team, row.feature) == (
        created["id"], "search", "alice", "core", "summarize")
    # the secret is stored hashed and never shown again
    stored = admin_gateway.run(admin_gateway.runtime.db.key_by_id(created["id"]))
    assert stored is not None and secret not in stored.hash
    shown = admin.get(f"/keys/{created['id']}")
    listed = admin.get("/keys", project="search")
    assert "key" not in shown and secret not in str(listed) and secret not in str(shown)
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    assert admin.get("/keys", project="other") == {"data": []}
    # revoked: refused at once in this process
    revoked = admin.call("POST", f"/keys/{created['id']}/revoke")
    assert revoked["state"] == "revoked" and revoked["revoked_at"]
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(admin_gateway, secret)
    assert "revoked" in refused.value.message
    assert admin.get("/keys")["data"] == []
    assert [k["id"] for k in admin.get("/keys", state="revoked")["data"]] == [created["id"]]
    assert admin.call("POST", f"/keys/{created['id']}/rotate", expect=409)["error"]["code"] \
        == "key_revoked"


def test_models_outside_the_keys_list_are_refused(admin: Admin, admin_gateway: Gateway) -> None:
    secret = admin.call("POST", "/keys", {"project": "p", "allowed_models": ["gpt-4o"]},
                        expect=201)["key"]
    with pytest.raises(openai.PermissionDeniedError):
        chat(admin_gateway, secret)


def test_expiry_at_a_date(admin: Admin, admin_gateway: Gateway) -> None:
    later = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    created = admin.call("POST", "/keys", {"project": "p", "expires_at": later}, expect=201)
    assert abs(created["expires_at"] - (time.time() + 3600)) < 5
    chat(admin_gateway, created["key"])
    past = admin.call("POST", "/keys", {"project": "p", "expires_at": "2020-01-01T00:00:00Z"},
                      expect=422)
    assert "past" in past["error"]["message"]
    # expire it now: refused from the next request
    changed = admin.call("PATCH", f"/keys/{created['id']}",
                         {"expires_at": time.time() - 1, "name": "expired"})
    assert changed["state"] == "expired" and changed["name"] == "expired"
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(admin_gateway, created["key"])
    assert "expired" in refused.value.message
    assert [k["id"] for k in admin.get("/keys", state="expired")["data"]] == [created["id"]]
    # and back: clearing the expiry makes it work again
    assert admin.call("PATCH", f"/keys/{created['id']}", {"expires_at": None})["state"] \
        == "active"
    chat(admin_gateway, created["key"])


def test_rotate_replaces_the_secret(admin: Admin, admin_gateway: Gateway) -> None:
    created = admin.call("POST", "/keys", {"project": "p", "user": "u"}, expect=201)
    rotated = admin.call("POST", f"/keys/{created['id']}/rotate")
    assert rotated["id"] == created["id"] and rotated["key"] != created["key"]
    assert rotated["user"] == "u"
    with pytest.raises(openai.AuthenticationError):
        chat(admin_gateway, created["key"])
    chat(admin_gateway, rotated["key"])


def test_bad_requests_say_what_to_fix(admin: Admin) -> None:
    missing = admin.call("POST", "/keys", {"user": "x"}, expect=422)
    assert missing["error"]["details"][0]["field"] == "project"
    unknown = admin.call("POST", "/keys", {"project": "p", "colour": "red"}, expect=422)
    assert unknown["error"]["details"][0]["field"] == "colour"
    limits = admin.call("POST", "/keys", {"project": "p", "limits": {
        "daily": {"window": "fortnight", "amount": 5}}}, expect=422)
    assert "window" in limits["error"]["message"]
    assert admin.get("/keys/key_nope", expect=404)["error"]["code"] == "key_not_found"
    assert admin.get("/keys", state="gone", expect=422)["error"]["code"] == "invalid_query"
    resp = admin.session.post(admin.base + "/keys", data=b"{not json", timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
