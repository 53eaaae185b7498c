"""What the routes to an object an upstream holds (a stored response, a batch, a file)
share: the error frame around a call, the route and method check, who may read the
object, the upstream that holds it, and reading the upstream's answer.

Such a call costs nothing and leaves no ledger row; it is relayed only to a caller of the
organization and project that created the object through this gateway.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import orjson

from tokenstile.errors import GatewayError
from tokenstile.gateway import asgi
from tokenstile.gateway.upstream import RELAYED_RESPONSE_HEADERS
from tokenstile.gateway.upstream_response import BODY_ERRORS, UpstreamResponse
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.types import new_request_id

if TYPE_CHECKING:
    from tokenstile.config import UpstreamConfig
    from tokenstile.gateway.runtime import Runtime
    from tokenstile.stores.responses import StoredResponse
    from tokenstile.types import Caller

log = logging.getLogger("tokenstile.gateway")


class StoredObjectRoutes(ABC):
    """One ASGI handler: ``_serve`` relays the call, and an error it raises becomes the
    OpenAI-shaped error answer (a 500 for anything unforeseen) unless the answer had begun."""

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

    @abstractmethod
    async def _serve(self, rt: Runtime, scope: asgi.Scope, receive: asgi.Receive,
                     send: asgi.ResponseTracker, request_id: str) -> None: ...


def check_route(scope: asgi.Scope, item_id: str, methods: tuple[str, ...] | None) -> str:
    """The request's method, once the path names an object and an action this route
    serves (else a 404) and the action accepts the method (else a 405)."""
    method: str = scope["method"]
    if not item_id or methods is None:
        raise GatewayError(404, f"unknown route {method} {scope['path']}; see the README "
                           "for the routes tokenstile serves", code="unknown_route")
    if method not in methods:
        raise GatewayError(405, f"{scope['path']} accepts {' and '.join(methods)}, not "
                           f"{method}", code="method_not_allowed",
                           headers={"allow": ", ".join(methods)})
    return method


async def caller_of(rt: Runtime, scope: asgi.Scope, receive: asgi.Receive
                    ) -> tuple[dict[str, str], Caller, str | None, bytes | None]:
    """The request's headers, its caller and provider key, and its body (a POST's only)."""
    server = rt.config.server
    headers = asgi.header_dict(scope)
    caller, provider_key = await rt.auth.authenticate(headers)
    body = None
    if scope["method"] == "POST":
        body = await asgi.read_body(receive, server.max_body_bytes, server.body_timeout_s)
    return headers, caller, provider_key, body


async def owned_entry(rt: Runtime, item_id: str, caller: Caller, what: str, known: str,
                      kinds: Collection[str] | None = None) -> StoredResponse:
    """The stored entry of ``item_id`` when the caller's organization and project created
    it (and, with ``kinds``, it is of one of them); else a 404 that says nothing of others'
    objects. ``known`` says what the database knows, for the 503 when it is unreachable."""
    try:
        entry = await rt.background.lookup(item_id)
    except StoreUnavailable:
        raise GatewayError(503, f"the database that knows {known} is unreachable; try again "
                           "shortly", type="api_error", code="database_unavailable",
                           headers={"retry-after": "2"}) from None
    if entry is None or (kinds is not None and entry.record.get("kind") not in kinds) or \
            entry.organization != caller.organization or entry.project != caller.project:
        raise GatewayError(404, f"no {what} {item_id!r} was created through this gateway "
                           f"for project {caller.project!r}", code=f"{what}_not_found",
                           param=f"{what}_id")
    return entry


def upstream_of(rt: Runtime, entry: StoredResponse, label: str) -> UpstreamConfig:
    """The configuration of the upstream that holds ``entry`` (``label`` names it in the
    502 when that upstream is no longer configured)."""
    config = rt.config.upstreams.get(entry.upstream)
    if config is None:
        raise GatewayError(502, f"{label} was created on upstream {entry.upstream!r}, "
                           "which is no longer configured", type="api_error",
                           code="upstream_unknown")
    return config


def relayed_headers(resp: UpstreamResponse) -> tuple[dict[str, str], str]:
    """The upstream's headers a client is shown, and the answer's content type."""
    relayed = {k: v for k in RELAYED_RESPONSE_HEADERS if (v := resp.headers.get(k)) is not None}
    return relayed, resp.headers.get("content-type", "application/json")


async def read_answer(resp: UpstreamResponse, upstream: str) -> bytes:
    try:
        return await resp.read()
    except BODY_ERRORS:
        raise GatewayError(502, f"upstream {upstream!r} broke off its answer",
                           type="api_error", code="upstream_cut") from None


def json_or_none(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
