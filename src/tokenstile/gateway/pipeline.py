"""The request path, top to bottom. Each stage is one call into the module that owns it:

    intake     gateway/intake.py     read the body, authenticate, parse, attribute, count
    policies   policies/engine.py    request policies: block, rewrite, or answer themselves
    degrade    degrade/stage.py      fit the input to its budget, downgrade past a threshold
    forward    gateway/forward.py    route to an upstream (and, later, send with retries)
    cache      gateway/caching.py    answer from the response cache when a rule says so
    admit      limits/admission.py   reserve the worst case on every budget, in one round
                                     trip; when one is exhausted, its fallbacks first
    throttle   degrade/stage.py      pace a scope past its throttle threshold
    relay      gateway/relay.py      send the answer back and count what it used
    settle     gateway/settle.py     price, write the ledger row, settle the reservation

``docs/request-path.md`` is the map of this file.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tokenstile.errors import GatewayError
from tokenstile.gateway import asgi
from tokenstile.limits.explain import BudgetExhausted
from tokenstile.types import ApiKind, Arrival, RequestContext, WireFormat, new_request_id

if TYPE_CHECKING:
    from tokenstile.clock import Clock
    from tokenstile.config import ServerConfig
    from tokenstile.degrade.stage import Degrader
    from tokenstile.gateway.caching import CacheStage
    from tokenstile.gateway.forward import Forwarder
    from tokenstile.gateway.intake import Intake
    from tokenstile.gateway.relay import Relay
    from tokenstile.gateway.routing import Target
    from tokenstile.gateway.settle import Settler
    from tokenstile.gateway.summary import Summarizer
    from tokenstile.limits.admission import Admission
    from tokenstile.policies.engine import PolicyEngine

log = logging.getLogger("tokenstile.gateway")


class Gateway:
    """Serves the proxy routes; built once per config (``gateway.assemble``), so a request
    runs under the config in force when it arrived, even if it is reloaded meanwhile."""

    def __init__(self, *, server: ServerConfig, clock: Clock, intake: Intake,
                 policies: PolicyEngine, degrader: Degrader, forwarder: Forwarder,
                 caching: CacheStage, admission: Admission, relay: Relay, settler: Settler,
                 summarizer: Summarizer) -> None:
        self.server = server
        self.clock = clock
        self.intake = intake
        self.policies = policies
        self.degrader = degrader
        self.forwarder = forwarder
        self.caching = caching
        self.admission = admission
        self.relay = relay
        self.settler = settler
        self.summarizer = summarizer

    async def handle(self, api: ApiKind, wire: WireFormat, scope: asgi.Scope,
                     receive: asgi.Receive, send: asgi.Send,
                     route_fields: dict[str, Any] | None = None) -> None:
        """Serve one request; whatever happens, answer in the client's error shape and
        settle what it used. ``route_fields``: body fields the URL carried."""
        call = Arrival(id=new_request_id(), api=api, wire=wire, ts=self.clock.now(),
                       started=self.clock.monotonic(), headers=asgi.header_dict(scope),
                       route_fields=route_fields)
        responded = asgi.ResponseTracker(send, self.server.write_timeout_s)
        try:
            if asgi.header_size(scope) > self.server.max_header_bytes:
                raise asgi.headers_too_large(self.server.max_header_bytes)
            call = ctx = await self.intake.read(call, receive)
            await self.serve(ctx, receive, responded)
        except asgi.ClientDisconnected:
            call.status, call.outcome = 499, "client_disconnect"
        except GatewayError as err:
            call.status = err.status
            if call.outcome == "ok":
                call.outcome = "blocked" if err.status in (403, 422, 429) else "error"
            call.block_reason = call.block_reason or (err.code or err.type)
            if not responded.started:
                await asgi.send_json(responded, err.status, err.body(wire),
                                     {**call.response_headers, **err.headers_for(wire)},
                                     call.id)
        except Exception:
            log.exception("request %s failed inside the gateway", call.id)
            call.status, call.outcome, call.block_reason = 500, "error", "internal_error"
            if not responded.started:
                internal = GatewayError(500, f"internal error in the gateway (request "
                                        f"{call.id})", type="api_error", code="internal_error")
                await asgi.send_json(responded, 500, internal.body(wire),
                                     internal.headers_for(wire), call.id)
        finally:
            await self.settler.finish(call)

    async def serve(self, ctx: RequestContext, receive: asgi.Receive,
                    send: asgi.ResponseTracker) -> None:
        """The stages of one understood request, in order."""
        self.intake.check(ctx)
        await self.policies.before(ctx)
        if ctx.auto_reply is not None:
            await self.relay.auto_reply(ctx, send)
            return
        recount = self.intake.adapters[ctx.wire].count_input
        await self.degrader.fit_input(ctx, lambda: recount(ctx.req), self.summarizer)
        self.degrader.downgrade(ctx)
        target = self.forwarder.route(ctx)
        plan = ctx.cache_plan = self.caching.plan(ctx)
        if plan is not None and plan.read_now:
            answer = await self.caching.read_now(ctx, plan)
            if answer is not None:
                await self.relay.cached(ctx, answer, send)
                return
        if ctx.api not in ("count_tokens", "files"):  # free: nothing to reserve
            admitted = await self.admit(ctx, target, send)
            if admitted is None:
                return  # answered from the cache instead of refused
            target = admitted
            await self.degrader.throttle(ctx)
        opened = await self.forwarder.open(ctx, target)
        await self.relay.upstream_answer(ctx, opened, receive, send)

    async def admit(self, ctx: RequestContext, target: Target,
                    send: asgi.ResponseTracker) -> Target | None:
        """Reserve; when a budget is exhausted, try its fallbacks (a cached answer, a cheaper
        model) before refusing. None means the request was answered from the cache."""
        try:
            ctx.ticket = await self.admission.reserve(ctx)
            return target
        except BudgetExhausted as exhausted:
            for option in self.degrader.fallbacks(exhausted.limit):
                plan = ctx.cache_plan
                if option == "cache" and plan is not None and plan.read_on_block:
                    answer = await self.caching.get(plan)
                    if answer is not None:
                        ctx.block_reason = None
                        ctx.degraded.append("cached")
                        ctx.cached_because = exhausted.limit.name
                        await self.relay.cached(ctx, answer, send)
                        return None
                cheaper = self.degrader.cheaper(ctx.req.model) if option == "downgrade" \
                    else None
                if cheaper is None:
                    continue
                self.degrader.switch_model(ctx, cheaper, f"{exhausted.limit.name} exhausted")
                target = self.forwarder.route(ctx)
                ctx.block_reason = None
                try:
                    ctx.ticket = await self.admission.reserve(ctx)
                    return target
                except BudgetExhausted:
                    continue
            raise
