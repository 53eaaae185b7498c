"""``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content`` and ``DELETE /v1/files/{id}``: relayed to the upstream that
holds the batch or file, for callers of the organization and project that created it
through the gateway (a batch's output and error files belong to whoever may read the batch).

These calls cost nothing and leave no ledger row, but a batch seen here in a final state is
settled before the client hears of it (``gateway.batches``), so a client that polls finds
its ledger row already written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenstile.gateway import asgi
from tokenstile.gateway import stored_routes as stored
from tokenstile.gateway.upstream import resource_url, upstream_headers

if TYPE_CHECKING:
    from tokenstile.gateway.runtime import Runtime

PREFIXES = ("/v1/batches/", "/v1/files/")
# (kind of path, action) -> the methods it accepts
ACTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("batches", ""): ("GET",), ("batches", "cancel"): ("POST",),
    ("files", ""): ("GET", "DELETE"), ("files", "content"): ("GET",),
}
_KINDS = {"batches": ("batch",), "files": ("file", "output")}


class BatchRoutes(stored.StoredObjectRoutes):
    async def _serve(self, rt: Runtime, scope: asgi.Scope, receive: asgi.Receive,
                     send: asgi.ResponseTracker, request_id: str) -> None:
        _, _, kind, *rest = scope["path"].rstrip("/").split("/")
        item_id = rest[0] if rest else ""
        action = "/".join(rest[1:])
        method = stored.check_route(scope, item_id, ACTIONS.get((kind, action)))
        headers, caller, provider_key, _ = await stored.caller_of(rt, scope, receive)
        what = "batch" if kind == "batches" else "file"
        entry = await stored.owned_entry(rt, item_id, caller, what,
                                         "which batches and files belong to whom", _KINDS[kind])
        config = stored.upstream_of(rt, entry, repr(item_id))
        query = scope.get("query_string", b"").decode("latin-1")
        resp = await rt.upstream.request(
            method, entry.upstream, config, resource_url(config, kind, item_id, action, query),
            upstream_headers(config, headers, provider_key), b"" if method == "POST" else None)
        try:
            relayed, content_type = stored.relayed_headers(resp)
            payload = await stored.read_answer(resp, entry.upstream)
        finally:
            resp.release()
        if kind == "batches" and resp.status == 200:
            parsed = stored.json_or_none(payload)
            if isinstance(parsed, dict):
                await rt.background.observed(entry, parsed, provider_key)
                for key in ("output_file_id", "error_file_id"):
                    await rt.batches.share(entry, parsed.get(key))
        await asgi.send_raw(send, resp.status, payload, content_type, relayed, request_id)
