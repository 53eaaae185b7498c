"""``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content`` and ``DELETE /v1/files/{id}``: relayed to the upstream that
holds the batch or file, for callers of the organization and project that created it
through the gateway (a batch's output and error files belong to whoever may read the batch).

These calls cost nothing and leave no ledger row, but a batch seen here in a final state is
settled before the client hears of it (``gateway.batches``), so a client that polls finds
its ledger row already written.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from tokenstile.errors import GatewayError
from tokenstile.gateway import asgi
from tokenstile.gateway.upstream import RELAYED_RESPONSE_HEADERS, resource_url, upstream_headers
from tokenstile.gateway.upstream_response import BODY_ERRORS
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.types import new_request_id

if TYPE_CHECKING:
    from tokenstile.gateway.runtime import Runtime
    from tokenstile.stores.responses import StoredResponse
    from tokenstile.types import Caller

log = logging.getLogger("tokenstile.gateway")

PREFIXES = ("/v1/batches/", "/v1/files/")
# (kind of path, action) -> the methods it accepts
ACTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("batches", ""): ("GET",), ("batches", "cancel"): ("POST",),
    ("files", ""): ("GET", "DELETE"), ("files", "content"): ("GET",),
}
_KINDS = {"batches": ("batch",), "files": ("file", "output")}


class BatchRoutes:
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
        _, _, kind, *rest = scope["path"].rstrip("/").split("/")
        item_id = rest[0] if rest else ""
        action = "/".join(rest[1:])
        methods = ACTIONS.get((kind, action))
        if not item_id or methods is None:
            raise GatewayError(404, f"unknown route {method} {scope['path']}; see the README "
                               "for the routes tokenstile serves", code="unknown_route")
        if method not in methods:
            raise GatewayError(405, f"{scope['path']} accepts {' and '.join(methods)}, not "
                               f"{method}", code="method_not_allowed",
                               headers={"allow": ", ".join(methods)})
        server = rt.config.server
        headers = asgi.header_dict(scope)
        caller, provider_key = await rt.auth.authenticate(headers)
        if method == "POST":
            await asgi.read_body(receive, server.max_body_bytes, server.body_timeout_s)
        entry = await self._entry(rt, kind, item_id, caller)
        config = rt.config.upstreams.get(entry.upstream)
        if config is None:
            raise GatewayError(502, f"{item_id!r} was created on upstream {entry.upstream!r}, "
                               "which is no longer configured", type="api_error",
                               code="upstream_unknown")
        query = scope.get("query_string", b"").decode("latin-1")
        resp = await rt.upstream.request(
            method, entry.upstream, config, resource_url(config, kind, item_id, action, query),
            upstream_headers(config, headers, provider_key), b"" if method == "POST" else None)
        try:
            relayed = {k: v for k in RELAYED_RESPONSE_HEADERS
                       if (v := resp.headers.get(k)) is not None}
            content_type = resp.headers.get("content-type", "application/json")
            try:
                payload = await resp.read()
            except BODY_ERRORS:
                raise GatewayError(502, f"upstream {entry.upstream!r} broke off its answer",
                                   type="api_error", code="upstream_cut") from None
        finally:
            resp.release()
        if kind == "batches" and resp.status == 200:
            parsed: Any
            try:
                parsed = orjson.loads(payload)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                await rt.background.observed(entry, parsed, provider_key)
                for key in ("output_file_id", "error_file_id"):
                    await rt.batches.share(entry, parsed.get(key))
        await asgi.send_raw(send, resp.status, payload, content_type, relayed, request_id)

    @staticmethod
    async def _entry(rt: Runtime, kind: str, item_id: str, caller: Caller) -> StoredResponse:
        try:
            entry = await rt.background.lookup(item_id)
        except StoreUnavailable:
            raise GatewayError(503, "the database that knows which batches and files belong "
                               "to whom is unreachable; try again shortly", type="api_error",
                               code="database_unavailable", headers={"retry-after": "2"}
                               ) from None
        what = "batch" if kind == "batches" else "file"
        if entry is None or entry.record.get("kind") not in _KINDS[kind] or \
                entry.organization != caller.organization or entry.project != caller.project:
            raise GatewayError(404, f"no {what} {item_id!r} was created through this gateway "
                               f"for project {caller.project!r}", code=f"{what}_not_found",
                               param=f"{what}_id")
        return entry
