"""The OpenAPI document and the routes agree, both ways, and every answer is described."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from tests.admin.conftest import Admin
from tests.conftest import Gateway
from tokenstile.admin.api import admin_app
from tokenstile.admin.openapi import PREFIX


def served_routes(gateway: Gateway) -> set[tuple[str, str]]:
    app = admin_app(gateway.runtime)
    out = set()
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                out.add((method, PREFIX + route.path))
    return out


def test_every_route_is_documented_and_every_documented_route_is_served(
        admin: Admin, admin_gateway: Gateway) -> None:
    doc = admin.get("/openapi.json")
    documented = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item}
    assert documented == served_routes(admin_gateway)


def test_operations_are_complete(admin: Admin) -> None:
    doc = admin.get("/openapi.json")
    ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ids.append(op["operationId"])
            assert op["summary"] and op["tags"], (method, path)
            statuses = set(op["responses"])
            assert any(s.startswith("2") for s in statuses), (method, path)
            if op["security"]:
                assert {"401", "403"} <= statuses, (method, path)
            for name in (p["name"] for p in op.get("parameters", ()) if p["in"] == "path"):
                assert "{" + name + "}" in path
    assert len(ids) == len(set(ids))


def test_every_reference_resolves(admin: Admin) -> None:
    doc = admin.get("/openapi.json")
    schemas = doc["components"]["schemas"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                assert ref.removeprefix("#/components/schemas/") in schemas, ref
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
