"""``GET``/``DELETE /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel`` and
``GET /v1/responses/{id}/input_items``: relayed to the upstream that created the response,
for callers of the organization and project that created it through this gateway.

These calls cost nothing and leave no ledger row, but a background response seen here in
a terminal state is settled before the client hears of it (``gateway.background``), so a
client that polls finds its ledger row already written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from tokenstile.errors import GatewayError
from tokenstile.gateway import asgi
from tokenstile.gateway.background import RUNNING, TERMINAL
from tokenstile.gateway.upstream import (
    RELAYED_RESPONSE_HEADERS,
    response_url,
    upstream_headers,
)
from tokenstile.gateway.upstream_response import BODY_ERRORS, UpstreamResponse
from tokenstile.providers.sse import EventSplitter, event_fields
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.responses import StoredResponse
from tokenstile.types import new_request_id

if TYPE_CHECKING:
    from tokenstile.config import UpstreamConfig
    from tokenstile.gateway.runtime import Runtime
    from tokenstile.types import Caller

log = logging.getLogger("tokenstile.gateway")

PREFIX = "/v1/responses/"
ACTIONS: dict[str, tuple[str, ...]] = {"": ("GET", "DELETE"), "cancel": ("POST",),
                                       "input_items": ("GET",)}
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed",
                           "response.cancelled"})


class ResponseRoutes:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def handle(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        rt = self.rt.view
        responded = asgi.ResponseTracker(send, rt.config.server.write_timeout_s)
        request_id = new_request_id()
        try:
            await self._serve(rt, scope, receive, responded, request_id)
        except asgi.ClientDisconnected:
            return
        except GatewayError as err:
            if not responded.started:
                await asgi.send_json(responded, err.status, err.body("openai"), err.headers,
                                     request_id)
        except Exception:
            log.exception("%s %s failed inside the gateway (request %s)", scope["method"],
                          scope["path"], request_id)
            if not responded.started:
                internal = GatewayError(500, f"internal error in the gateway (request "
                                        f"{request_id})", type="api_error",
                                        code="internal_error")
                await asgi.send_json(responded, 500, internal.body("openai"), {}, request_id)

    async def _serve(self, rt: Runtime, scope: asgi.Scope, receive: asgi.Receive,
                     send: asgi.ResponseTracker, request_id: str) -> None:
        method: str = scope["method"]
        response_id, _, action = scope["path"].rstrip("/")[len(PREFIX):].partition("/")
        methods = ACTIONS.get(action)
        if not response_id or methods is None:
            raise GatewayError(404, f"unknown route {method} {scope['path']}; see the README "
                               "for the routes tokenstile serves", code="unknown_route")
        if method not in methods:
            raise GatewayError(405, f"{scope['path']} accepts {' and '.join(methods)}, not "
                               f"{method}", code="method_not_allowed",
                               headers={"allow": ", ".join(methods)})
        server = rt.config.server
        headers = asgi.header_dict(scope)
        caller, provider_key = await rt.auth.authenticate(headers)
        body = None
        if method == "POST":
            body = await asgi.read_body(receive, server.max_body_bytes, server.body_timeout_s)
        entry = await self._entry(rt, response_id, caller)
        config = rt.config.upstreams.get(entry.upstream)
        if config is None:
            raise GatewayError(502, f"response {response_id!r} was created on upstream "
                               f"{entry.upstream!r}, which is no longer configured",
                               type="api_error", code="upstream_unknown")
        if method == "DELETE" and entry.state == "pending":
            await self._before_delete(rt, entry, config, headers, provider_key)
        query = scope.get("query_string", b"").decode("latin-1")
        resp = await rt.upstream.request(
            method, entry.upstream, config, response_url(config, response_id, action, query),
            upstream_headers(config, headers, provider_key), body or None)
        try:
            relayed = {k: v for k in RELAYED_RESPONSE_HEADERS
                       if (v := resp.headers.get(k)) is not None}
            content_type = resp.headers.get("content-type", "application/json")
            if "text/event-stream" in content_type:
                final = await self._relay_stream(resp, receive, send, relayed, request_id)
                if final is not None and action == "":
                    await rt.background.observed(entry, final, provider_key)
                return
            try:
                payload = await resp.read()
            except BODY_ERRORS:
                raise GatewayError(502, f"upstream {entry.upstream!r} broke off its answer",
                                   type="api_error", code="upstream_cut") from None
        finally:
            resp.release()
        if resp.status == 200 and method != "DELETE" and action in ("", "cancel"):
            try:
                parsed: Any = orjson.loads(payload)
            except orjson.JSONDecodeError:
                parsed = None
            await rt.background.observed(entry, parsed, provider_key)
        await asgi.send_raw(send, resp.status, payload, content_type, relayed, request_id)

    @staticmethod
    async def _entry(rt: Runtime, response_id: str, caller: Caller) -> StoredResponse:
        try:
            entry = await rt.background.lookup(response_id)
        except StoreUnavailable:
            raise GatewayError(503, "the database that knows which responses belong to whom "
                               "is unreachable; try again shortly", type="api_error",
                               code="database_unavailable", headers={"retry-after": "2"}
                               ) from None
        if entry is None or entry.organization != caller.organization \
                or entry.project != caller.project:
            raise GatewayError(404, f"no response {response_id!r} was created through this "
                               f"gateway for project {caller.project!r}",
                               code="response_not_found", param="response_id")
        return entry

    @staticmethod
    async def _before_delete(rt: Runtime, entry: StoredResponse, config: UpstreamConfig,
                             headers: dict[str, str], provider_key: str | None) -> None:
        """A background response is billed when it ends: settle it first if it has, and
        refuse to delete one that still runs."""
        resp = await rt.upstream.request(
            "GET", entry.upstream, config, response_url(config, entry.id),
            upstream_headers(config, headers, provider_key))
        try:
            payload = await resp.read() if resp.status == 200 else b""
        finally:
            resp.release()
        try:
            current = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            current = None
        if isinstance(current, dict) and current.get("status") in TERMINAL:
            await rt.background.observed(entry, current, provider_key)
        elif isinstance(current, dict) and current.get("status") in RUNNING:
            raise GatewayError(409, f"response {entry.id!r} is still running and is billed "
                               f"when it ends; cancel it first (POST /v1/responses/"
                               f"{entry.id}/cancel)", code="response_running")

    @staticmethod
    async def _relay_stream(resp: UpstreamResponse, receive: asgi.Receive,
                            send: asgi.ResponseTracker, headers: dict[str, str],
                            request_id: str) -> dict[str, Any] | None:
        """Relay a resumed stream (``?stream=true``) event by event; return the response
        its final event carried, if the stream got that far."""
        await send.start(resp.status, [(b"content-type", b"text/event-stream; charset=utf-8"),
                                       (b"cache-control", b"no-cache"),
                                       *asgi.encode_headers(headers, request_id)])
        splitter = EventSplitter()
        final: dict[str, Any] | None = None

        async def pump() -> None:
            nonlocal final
            async for chunk in resp.content.iter_any():
                for event in splitter.feed(chunk):
                    name, data = event_fields(event)
                    if name in _FINAL_EVENTS or b'"type":"response.' in data[:40]:
                        try:
                            payload = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            payload = None
                        if isinstance(payload, dict) and payload.get("type") in _FINAL_EVENTS \
                                and isinstance(payload.get("response"), dict):
                            final = payload["response"]
                await send.body(chunk, more=True)

        pumping = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(asgi.wait_for_disconnect(receive))
        try:
            await asyncio.wait((pumping, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
        if not pumping.done():
            pumping.cancel()
            return final
        if pumping.exception() is None:
            await send.body(b"", more=False)
        return final
