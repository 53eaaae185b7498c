"""The admin API: a Starlette app mounted at ``/admin`` (JSON, behind the admin key).

When ``server.admin_port`` is set the API is served only on that separate listener (see
``listener.py``) and the public one answers 404 under ``/admin``.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from tokenstile.admin import (
    dashboard_api,
    keys,
    metrics_api,
    overrides,
    reconcile,
    runs,
    settings,
    usage,
)
from tokenstile.admin.endpoint import Call, Endpoint, route
from tokenstile.admin.http import ApiError, json_response
from tokenstile.admin.openapi import openapi_document
from tokenstile.gateway.asgi import Receive, Scope, Send
from tokenstile.gateway.runtime import Runtime, admin_key_for


def _admin_key(rt: Runtime) -> str | None:
    return admin_key_for(rt.config)


async def openapi(call: Call) -> dict[str, Any]:
    return openapi_document(ENDPOINTS)


ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/openapi.json", openapi, "This document", "meta",
             response={"type": "object"}, public=True),
    *settings.ENDPOINTS,
    *keys.ENDPOINTS,
    *overrides.ENDPOINTS,
    *usage.ENDPOINTS,
    *reconcile.ENDPOINTS,
    *runs.ENDPOINTS,
    *dashboard_api.ENDPOINTS,
    *metrics_api.ENDPOINTS,
]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                        code="method_not_allowed").response()
    return ApiError(404, f"unknown admin route {request.method} {request.url.path}; "
                         "GET /admin/openapi.json lists them", code="unknown_route").response()


def admin_app(rt: Runtime) -> Starlette:
    """The admin routes, relative to where the app is mounted (``/admin``)."""
    return Starlette(routes=[route(e, _admin_key, rt) for e in ENDPOINTS],
                     exception_handlers={404: _http_error, 405: _http_error})


class PublicAdmin:
    """The admin app as the public listener serves it: absent when it has its own address."""

    def __init__(self, rt: Runtime, app: Starlette) -> None:
        self.rt = rt
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.rt.config.server.admin_port is not None:
            response = json_response({"error": {
                "message": "tokenstile: the admin API is served on its own address "
                           "(server.admin_host:server.admin_port), not here",
                "type": "not_found_error", "code": "admin_elsewhere"}}, 404)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def mounted_admin(rt: Runtime) -> PublicAdmin:
    """What the public app mounts at ``/admin``."""
    return PublicAdmin(rt, admin_app(rt))


class AdminMount(Mount):
    """``Mount("/admin", …)`` that also takes paths with control characters (newlines and
    all), so every answer under ``/admin`` is the admin API's JSON, even a 404."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__("/admin", app=mounted_admin(rt))
        self.path_regex = re.compile(self.path_regex.pattern, re.DOTALL)
