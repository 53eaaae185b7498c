"""Admin routes refuse missing, wrong and non-admin keys, and say why."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin.conftest import ADMIN_KEY, Admin
from tests.conftest import Gateway
from tokenstile.admin.api import ENDPOINTS

PROTECTED = [(e.method, e.path.replace("{", "").replace("}", "")) for e in ENDPOINTS
             if not e.public]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_admin_route_refuses_a_missing_key(admin_gateway: Gateway, method: str,
                                                 path: str) -> None:
    answer = Admin(admin_gateway.url, key=None).call(method, path, {}, expect=401)
    assert answer["error"]["code"] == "missing_admin_key"
    assert answer["error"]["message"].startswith("tokenstile: ")


def test_a_wrong_key_is_refused(admin_gateway: Gateway) -> None:
    answer = Admin(admin_gateway.url, key=ADMIN_KEY + "x").get("/keys", expect=401)
    assert answer["error"]["code"] == "invalid_admin_key"
    answer = Admin(admin_gateway.url, key="short").get("/keys", expect=401)
    assert answer["error"]["code"] == "invalid_admin_key"


def test_a_project_key_is_not_an_admin_key(admin_gateway: Gateway) -> None:
    project_key = admin_gateway.key(project="demo")
    answer = Admin(admin_gateway.url, key=project_key).get("/keys", expect=403)
    assert answer["error"]["code"] == "not_admin"
    assert project_key not in str(answer)
    answer = Admin(admin_gateway.url, key=project_key).call(
        "POST", "/keys", {"project": "x"}, expect=403)
    assert answer["error"]["code"] == "not_admin"


def test_other_schemes_than_bearer_are_not_accepted(admin_gateway: Gateway) -> None:
    admin = Admin(admin_gateway.url, key=None)
    admin.session.headers["authorization"] = f"Basic {ADMIN_KEY}"
    assert admin.get("/keys", expect=401)["error"]["code"] == "missing_admin_key"


def test_without_an_admin_key_the_admin_api_is_off(make_gateway: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENSTILE_ADMIN_KEY", raising=False)
    gateway = make_gateway()
    answer = Admin(gateway.url, key="anything").get("/keys", expect=403)
    assert answer["error"]["code"] == "admin_disabled"


def test_the_admin_key_may_come_from_the_environment(make_gateway: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENSTILE_ADMIN_KEY", "adm-from-env-0123456789")
    gateway = make_gateway()
    assert Admin(gateway.url, key="adm-from-env-0123456789").get("/keys") == {"data": []}


def test_the_openapi_document_is_public_and_unknown_routes_answer_json(
        admin_gateway: Gateway) -> None:
    anonymous = Admin(admin_gateway.url, key=None)
    assert anonymous.get("/openapi.json")["openapi"].startswith("3.")
    assert anonymous.get("/nope", expect=404)["error"]["code"] == "unknown_route"
