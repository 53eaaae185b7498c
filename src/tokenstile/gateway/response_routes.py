"""``GET``/``DELETE /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel`` and
``GET /v1/responses/{id}/input_items``: relayed to the upstream that created the response,
for callers of the organization and project that created it through this gateway.

These calls cost nothing and leave no ledger row, but a background response seen here in
a terminal state is settled before the client hears of it (``gateway.background``), so a
client that polls finds its ledger row already written.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from tokenstile.errors import GatewayError
from tokenstile.gateway import asgi
from tokenstile.gateway import stored_routes as stored
from tokenstile.gateway.background import RUNNING, TERMINAL
from tokenstile.gateway.upstream import response_url, upstream_headers
from tokenstile.gateway.upstream_response import UpstreamResponse
from tokenstile.providers.sse import EventSplitter, event_fields

if TYPE_CHECKING:
    from tokenstile.config import UpstreamConfig
    from tokenstile.gateway.runtime import Runtime
    from tokenstile.stores.responses import StoredResponse

PREFIX = "/v1/responses/"
ACTIONS: dict[str, tuple[str, ...]] = {"": ("GET", "DELETE"), "cancel": ("POST",),
                                       "input_items": ("GET",)}
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed",
                           "response.cancelled"})


class ResponseRoutes(stored.StoredObjectRoutes):
    async def _serve(self, rt: Runtime, scope: asgi.Scope, receive: asgi.Receive,
                     send: asgi.ResponseTracker, request_id: str) -> None:
        response_id, _, action = scope["path"].rstrip("/")[len(PREFIX):].partition("/")
        method = stored.check_route(scope, response_id, ACTIONS.get(action))
        headers, caller, provider_key, body = await stored.caller_of(rt, scope, receive)
        entry = await stored.owned_entry(rt, response_id, caller, "response",
                                         "which responses belong to whom")
        config = stored.upstream_of(rt, entry, f"response {response_id!r}")
        if method == "DELETE" and entry.state == "pending":
            await self._before_delete(rt, entry, config, headers, provider_key)
        query = scope.get("query_string", b"").decode("latin-1")
        resp = await rt.upstream.request(
            method, entry.upstream, config, response_url(config, response_id, action, query),
            upstream_headers(config, headers, provider_key), body or None)
        try:
            relayed, content_type = stored.relayed_headers(resp)
            if "text/event-stream" in content_type:
                final = await self._relay_stream(resp, receive, send, relayed, request_id)
                if final is not None and action == "":
                    await rt.background.observed(entry, final, provider_key)
                return
            payload = await stored.read_answer(resp, entry.upstream)
        finally:
            resp.release()
        if resp.status == 200 and method != "DELETE" and action in ("", "cancel"):
            await rt.background.observed(entry, stored.json_or_none(payload), provider_key)
        await asgi.send_raw(send, resp.status, payload, content_type, relayed, request_id)

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
        current = stored.json_or_none(payload) if payload else None
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
                        payload = stored.json_or_none(data)
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
