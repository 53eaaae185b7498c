"""Forward: route a request to its upstream and send it, retrying and falling back.

``route`` picks the upstream and model that serve the request (and counts its input again
when it crosses to another wire format). ``open`` sends it: on 429/5xx/timeouts it retries
with backoff, then goes down the fallback chain, skipping upstreams whose circuit is open
and fallbacks that could cost more than was reserved. It returns the response to relay
(possibly a final error). Attempts that timed out after they were sent may have been
billed: they are charged through ``PaidAttempts``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import orjson

from tokenstile.errors import GatewayError, bad_request
from tokenstile.gateway.attempts import PaidAttempts
from tokenstile.gateway.resilience import Attempt, backoff_delay, model_chain, parse_retry_after
from tokenstile.gateway.routing import Target
from tokenstile.gateway.upstream import UpstreamTimeout, upstream_headers, upstream_url
from tokenstile.gateway.upstream_response import UpstreamResponse
from tokenstile.providers.bridges import bridge_for
from tokenstile.providers.multipart import encode_form
from tokenstile.providers.openai import without_added_stream_usage
from tokenstile.providers.terms import reservation_terms
from tokenstile.types import LedgerRow, RequestContext, WireFormat

if TYPE_CHECKING:
    from tokenstile.clock import Clock
    from tokenstile.config import Config
    from tokenstile.gateway.resilience import CircuitBreakers
    from tokenstile.gateway.routing import Router
    from tokenstile.gateway.upstream import UpstreamClient
    from tokenstile.limits.admission import Admission
    from tokenstile.prices import Pricer
    from tokenstile.providers.base import Adapter, Bridge


@dataclass(slots=True)
class Opened:
    """The upstream's answer to relay, who gave it, and the bridge that translates it
    (None when the upstream speaks the client's format)."""

    response: UpstreamResponse
    target: Target
    bridge: Bridge | None


class Forwarder:
    def __init__(self, config: Config, router: Router, upstream: UpstreamClient,
                 breakers: CircuitBreakers, adapters: dict[WireFormat, Adapter],
                 admission: Admission, pricer: Pricer, clock: Clock,
                 write_row: Callable[[LedgerRow], Awaitable[None]]) -> None:
        self.config = config
        self.router = router
        self.upstream = upstream
        self.breakers = breakers
        self.adapters = adapters
        self.admission = admission
        self.pricer = pricer
        self.clock = clock
        self.write_row = write_row

    def route(self, ctx: RequestContext) -> Target:
        req = ctx.req
        target = self.router.resolve(req.model)
        pinned = req.media.upstream if req.media is not None else ""
        if pinned:  # a batch goes where its input file is
            config = self.router.upstreams.get(pinned)
            if config is None:
                raise GatewayError(502, f"the batch's input file is on upstream {pinned!r}, "
                                   "which is no longer configured", type="api_error",
                                   code="upstream_unknown")
            target = Target.of(pinned, config, req.model)
        ctx.upstream, ctx.served_model = target.upstream, target.model
        ctx.provider = target.provider
        if target.model != req.model and req.api in ("files", "batches"):
            raise bad_request(f"the model {req.model!r} is routed to {target.model!r}; a "
                              "batch file must name the model its upstream serves (routes "
                              "do not rename models inside files)", param="file")
        if target.model != req.model:
            req.body = {**req.body, "model": target.model}
        if target.wire != ctx.wire:
            # e.g. chat completions served by Claude: reserved at the Claude estimate of the
            # translated request.
            bridge = self._new_bridge(ctx, target)
            ctx.routed_bridge = (target, bridge)
            req.input_tokens = bridge.count_input()
        return target

    def bridge(self, ctx: RequestContext, target: Target) -> Bridge:
        """The bridge to forward through: routing's for the target it routed to (it follows
        the body as later stages changed it), else a new one."""
        routed = ctx.routed_bridge
        if routed is not None and routed[0] is target:
            return routed[1]
        return self._new_bridge(ctx, target)

    def _new_bridge(self, ctx: RequestContext, target: Target) -> Bridge:
        return bridge_for(ctx.api, ctx.wire, target.wire, target.upstream, ctx.req.body,
                          self.config.server.default_output_tokens)

    async def open(self, ctx: RequestContext, first: Target) -> Opened:
        """Send the request; on 429/5xx/timeouts retry with backoff, then go down the
        fallback chain. Returns the response to relay (possibly a final error)."""
        req = ctx.req
        config = self.config.resilience
        if ctx.retries is not None and ctx.retries != config.retries:
            config = config.model_copy(update={"retries": ctx.retries})  # a policy's own
        requested = req.model
        # A batch is created where its input file is: no fallback to another model.
        chain = [requested] if ctx.api == "batches" else model_chain(requested, config)
        attempts: list[Attempt] = []
        last_error: GatewayError | None = None
        paid = PaidAttempts(ctx, self.admission, self.pricer, self.write_row,
                            retry_timeouts=config.retry_timeouts,
                            default_output_tokens=self.config.server.default_output_tokens)
        for index, model in enumerate(chain):
            target = first if index == 0 else self.router.resolve(model)
            if index and not self._fallback_fits(ctx, target):
                continue
            if not self.breakers.allow(target.upstream):
                attempts.append(Attempt(target.upstream, target.model, error="circuit_open"))
                last_error = GatewayError(
                    503, f"upstream {target.upstream!r} is failing and is being left alone "
                         "for a while (circuit open); try again shortly", type="api_error",
                    code="upstream_circuit_open", headers={"retry-after": "5"})
                continue
            if not await paid.allow_another():
                raise self._give_up(ctx, attempts, requested, paid, last_error)
            bridge = self.bridge(ctx, target) if target.wire != ctx.wire else None
            candidate = req if req.body.get("model") == target.model or ctx.api in (
                "files", "batches") else replace(req, body={**req.body, "model": target.model})
            body = bridge.upstream_body(candidate) if bridge is not None \
                else self.adapters[ctx.wire].upstream_body(candidate)
            if req.stream and not target.config.stream_usage:
                body = without_added_stream_usage(body, None if bridge else candidate.body)
            url = upstream_url(target.config, bridge.upstream_api if bridge else ctx.api,
                               target.model, req.stream)
            headers = upstream_headers(target.config, ctx.headers, ctx.provider_key)
            if req.files is not None:  # a form: its fields as they are now, its files
                payload, headers["content-type"] = encode_form(body, req.files)
            else:
                payload = orjson.dumps(body)
            retry = 0
            while True:
                attempt = Attempt(target.upstream, target.model)
                attempts.append(attempt)
                started = ctx.sent_at = self.clock.monotonic()
                retry_after: float | None = None
                try:
                    resp = await self._post(target, url, payload, headers)
                except GatewayError as err:
                    attempt.error = err.code
                    attempt.ms = (self.clock.monotonic() - started) * 1000
                    self.breakers.failure(target.upstream)
                    last_error = err
                    paid.failed(attempt, target, err, len(attempts))
                else:
                    attempt.status = resp.status
                    attempt.ms = (self.clock.monotonic() - started) * 1000
                    if resp.status >= 500:
                        self.breakers.failure(target.upstream)
                    else:
                        self.breakers.success(target.upstream)
                    final = retry >= config.retries and index == len(chain) - 1
                    if resp.status not in config.retry_on or final:
                        self._record_attempts(ctx, attempts, target, requested)
                        return Opened(resp, target, bridge)
                    retry_after = parse_retry_after(resp.headers)
                    resp.release()
                    last_error = None
                retry += 1
                delay = backoff_delay(retry, config, retry_after)
                if delay is None:
                    break
                if not await paid.allow_another():
                    raise self._give_up(ctx, attempts, requested, paid, last_error)
                await asyncio.sleep(delay)
        raise self._give_up(ctx, attempts, requested, paid, last_error)

    def _give_up(self, ctx: RequestContext, attempts: list[Attempt], requested: str,
                 paid: PaidAttempts, last_error: GatewayError | None) -> GatewayError:
        """No attempt answered: the error to answer with; the last attempt is billed if it
        may have cost money."""
        self._record_attempts(ctx, attempts, None, requested)
        paid.charge_request()
        return last_error or GatewayError(
            502, f"no upstream could answer for the model {requested!r}", type="api_error",
            code="upstream_unavailable")

    async def _post(self, target: Target, url: str, payload: bytes,
                    headers: dict[str, str]) -> UpstreamResponse:
        limit = self.config.resilience.first_byte_timeout_s
        call = self.upstream.post(target.upstream, target.config, url, payload, headers)
        if limit is None:
            return await call
        try:
            async with asyncio.timeout(limit):  # no task of its own, unlike wait_for
                return await call
        except TimeoutError:
            raise UpstreamTimeout(target.upstream) from None

    def _fallback_fits(self, ctx: RequestContext, target: Target) -> bool:
        """A fallback may not cost more than the reservation made for the first choice.

        One on another wire format (chat served by Claude) is counted with another tokenizer,
        so it is only taken when no limit holds a reservation for this request.
        """
        req, ticket = ctx.req, ctx.ticket
        if target.wire != ctx.wire:
            return ctx.api in ("chat", "messages") and ticket is None
        if ticket is None or "usd" not in ticket.units:
            return True
        inp = other_inp = req.input_tokens + req.hidden_input_tokens
        if req.hidden_input:  # another model's worst case (its context window) may be larger
            other_inp = self.admission.hidden.worst_case(target.model, req.input_tokens).tokens
        first = self.pricer.estimate_nano(ctx.model, inp, req.output_cap or 0, ctx.provider,
                                          terms=self.admission.terms(ctx))
        other = self.pricer.estimate_nano(
            target.model, other_inp, req.output_cap or 0, target.provider,
            terms=reservation_terms(req, target.config.auto_service_tier))
        return first is not None and other is not None and other <= first

    def _record_attempts(self, ctx: RequestContext, attempts: list[Attempt],
                         target: Target | None, requested: str) -> None:
        if len(attempts) > 1:
            ctx.attempts = [a.as_dict() for a in attempts]
        if target is None:
            return
        ctx.upstream, ctx.served_model = target.upstream, target.model
        ctx.provider = target.provider
        if self.router.resolve(requested).model != target.model:
            ctx.degraded.append("fallback")
