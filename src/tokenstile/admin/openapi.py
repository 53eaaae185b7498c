"""``/admin/openapi.json``, generated from the same ``Endpoint`` list as the routes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from tokenstile import __version__
from tokenstile.admin.endpoint import Endpoint

PREFIX = "/admin"
_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]+)?\}")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {
        "type": "object",
        "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "code": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["message", "type", "code"],
    }},
    "required": ["error"],
}
_ERROR_TEXT = {400: "The body is not valid JSON", 401: "No admin key, or a wrong one",
               403: "Not an admin key, or the admin API is disabled", 404: "Not found",
               409: "Conflicts with the current state", 422: "Invalid parameters or body",
               503: "A store is unreachable"}


class _Schemas:
    """Collects model schemas into ``components.schemas``."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def of(self, model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=_REF)
        self.components.update(schema.pop("$defs", {}))
        self.components[model.__name__] = schema
        return {"$ref": _REF.format(model=model.__name__)}

    def params(self, model: type[BaseModel]) -> list[dict[str, Any]]:
        schema = model.model_json_schema(ref_template=_REF)
        self.components.update(schema.pop("$defs", {}))
        required = set(schema.get("required", ()))
        out = []
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                     "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            if prop.get("type") == "array":
                param.update(style="form", explode=True)
            out.append(param)
        return out


def path_of(endpoint: Endpoint) -> str:
    """The OpenAPI path: the route's, with any ``{name:convertor}`` reduced to ``{name}``."""
    return PREFIX + _PARAM.sub(lambda m: "{" + m.group(1) + "}", endpoint.path)


def _operation(endpoint: Endpoint, schemas: _Schemas) -> dict[str, Any]:
    path_params = _PARAM.findall(endpoint.path)
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "minLength": 1, "pattern": "^[^/\\x00-\\x1f]+$"}}
        for name in path_params]
    if endpoint.query is not None:
        parameters.extend(schemas.params(endpoint.query))
    response = endpoint.response if isinstance(endpoint.response, dict) \
        else schemas.of(endpoint.response)
    content: dict[str, Any] = {"application/json": {"schema": response}}
    if endpoint.csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {str(endpoint.status): {"description": "OK",
                                                        "content": content}}
    errors = set(endpoint.errors)
    if not endpoint.public:
        errors |= {401, 403}
    if endpoint.query is not None or endpoint.body is not None:
        errors.add(422)
    if endpoint.body is not None:
        errors.add(400)
    if path_params:
        errors.add(404)
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}
    op: dict[str, Any] = {"operationId": endpoint.operation_id, "summary": endpoint.summary,
                          "tags": [endpoint.tag], "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if endpoint.body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": schemas.of(endpoint.body)}}}
    op["security"] = [] if endpoint.public else [{"adminKey": []}] + (
        [{"projectKey": []}] if endpoint.readers else [])
    return op


def openapi_document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(path_of(endpoint), {})[endpoint.method.lower()] = \
            _operation(endpoint, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tokenstile admin API", "version": __version__,
                 "description": "Keys, runtime overrides, usage and budgets of a running "
                                "tokenstile gateway. Send the admin key as "
                                "'Authorization: Bearer <admin key>'."},
        "paths": paths,
        "components": {"schemas": schemas.components, "securitySchemes": {
            "adminKey": {"type": "http", "scheme": "bearer"},
            "projectKey": {"type": "http", "scheme": "bearer",
                           "description": "A tokenstile key (ts-…): reads its own project's "
                                          "dashboard only"}}},
    }
