"""The request path, top to bottom: authenticate, parse, count, policies, admit, forward,
relay and count, settle. Each stage is one call into the module that owns it."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from typing import Any

import aiohttp
import orjson

from tokenstile.cache import (
    CachedAnswer,
    StreamRecorder,
    account_hit,
    group_events,
    replay_events,
    wants_stream_usage,
)
from tokenstile.errors import GatewayError, StreamBlocked, bad_request, forbidden
from tokenstile.gateway import asgi
from tokenstile.gateway.attempts import PaidAttempts
from tokenstile.gateway.context import RequestContext, new_request_id
from tokenstile.gateway.counted import ReasoningTimer, bill_counted, settle_stream
from tokenstile.gateway.pricing import price_call
from tokenstile.gateway.resilience import (
    Attempt,
    backoff_delay,
    model_chain,
    parse_retry_after,
)
from tokenstile.gateway.routing import Target
from tokenstile.gateway.runtime import Runtime
from tokenstile.gateway.upstream import (
    RELAYED_RESPONSE_HEADERS,
    UpstreamTimeout,
    upstream_headers,
    upstream_url,
)
from tokenstile.limits.admission import BudgetExhausted, Ticket
from tokenstile.providers.answers import AnswerText, answer_text
from tokenstile.providers.base import Bridge, StreamObserver
from tokenstile.providers.openai import ResponsesStreamObserver
from tokenstile.providers.sse import EventSplitter
from tokenstile.providers.terms import reservation_terms
from tokenstile.providers.translate import bridge_for
from tokenstile.types import ApiKind, CanonicalRequest, LedgerRow, Usage, WireFormat

log = logging.getLogger("tokenstile.gateway")

MAX_UPSTREAM_BODY = 256 * 1024 * 1024
# How long a finished request keeps its reservation while its ledger row is written.
ROW_WAIT_S = 2.0
# Largest output cap accepted: keeps every worst case (tokens, nano-USD) in 64 bits.
MAX_OUTPUT_CAP = 2**31 - 1


class Gateway:
    """Serves the proxy routes. ``runtime`` holds the config and every shared service."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._bound: Gateway | None = None
        self._written: dict[str, asyncio.Future[None]] = {}
        runtime.ledger.listeners.append(self._rows_written)

    async def handle(self, api: ApiKind, wire: WireFormat, scope: asgi.Scope,
                     receive: asgi.Receive, send: asgi.Send) -> None:
        """Serve one request under the config in force when it arrived, even if the config
        is reloaded while it runs: it holds that config's ``Runtime.view`` throughout."""
        bound = self._bound
        if bound is None or bound.rt is not self.rt.view:
            bound = copy.copy(self)
            bound.rt, bound._bound = self.rt.view, None
            self._bound = bound
        await bound._handle(api, wire, scope, receive, send)

    async def _handle(self, api: ApiKind, wire: WireFormat, scope: asgi.Scope,
                      receive: asgi.Receive, send: asgi.Send) -> None:
        rt = self.rt
        ctx = RequestContext(
            id=new_request_id(), api=api, wire=wire, ts=rt.clock.now(),
            started=rt.clock.monotonic(), headers=asgi.header_dict(scope),
        )
        responded = asgi.ResponseTracker(send, rt.config.server.write_timeout_s)
        try:
            if asgi.header_size(scope) > rt.config.server.max_header_bytes:
                raise asgi.headers_too_large(rt.config.server.max_header_bytes)
            await self._serve(ctx, receive, responded)
        except asgi.ClientDisconnected:
            ctx.status, ctx.outcome = 499, "client_disconnect"
        except GatewayError as err:
            ctx.status = err.status
            if ctx.outcome == "ok":
                ctx.outcome = "blocked" if err.status in (403, 422, 429) else "error"
            ctx.block_reason = ctx.block_reason or (err.code or err.type)
            if not responded.started:
                await asgi.send_json(responded, err.status, err.body(wire),
                                     {**ctx.response_headers, **err.headers}, ctx.id)
        except Exception:
            log.exception("request %s failed inside the gateway", ctx.id)
            ctx.status, ctx.outcome, ctx.block_reason = 500, "error", "internal_error"
            if not responded.started:
                internal = GatewayError(500, f"internal error in the gateway (request {ctx.id})",
                                        type="api_error", code="internal_error")
                await asgi.send_json(responded, 500, internal.body(wire), {}, ctx.id)
        finally:
            await self._finish(ctx)

    # -- stages ------------------------------------------------------------------------------

    async def _serve(self, ctx: RequestContext, receive: asgi.Receive,
                     send: asgi.ResponseTracker) -> None:
        rt = self.rt
        server = rt.config.server
        asgi.check_body_headers(ctx.headers, server.max_body_bytes)
        raw = await asgi.read_body(receive, server.max_body_bytes, server.body_timeout_s)
        ctx.caller, ctx.provider_key = await rt.auth.authenticate(ctx.headers)
        adapter = rt.adapters[ctx.wire]
        body = parse_json_object(raw, server.max_json_depth, ctx.headers.get("content-type"))
        check_message_count(body, server.max_messages)
        req = ctx.req = adapter.parse(ctx.api, body)
        if req.api == "responses" and body.get("background") is True:
            ctx.detail["background"] = True  # so crash recovery knows (gateway.background)
        check_output_cap(req)
        attribute(ctx)
        check_model_access(ctx)
        rt.overrides.check(ctx)
        req.input_tokens = adapter.count_input(req)
        await rt.policies.before(ctx)
        if ctx.auto_reply is not None:
            await self._send_auto_reply(ctx, send)
            return
        await rt.degrader.fit_input(ctx, lambda: adapter.count_input(req), self._summarize)
        rt.degrader.downgrade(ctx)
        target = self._route(ctx)
        plan = ctx.cache_plan = rt.caching.plan(ctx)
        if plan is not None and plan.read_now:
            answer = await rt.caching.get(plan)
            if answer is not None:
                await self._send_cached(ctx, answer, send)
                return
        if req.api != "count_tokens":  # token counting is free: nothing to reserve
            admitted = await self._admit(ctx, target, send)
            if admitted is None:
                return  # answered from the cache instead of refused
            target = admitted
            await rt.degrader.throttle(ctx)
        resp, target, bridge = await self._open_upstream(ctx, target)
        try:
            ctx.ttfb_ms = (rt.clock.monotonic() - ctx.started) * 1000
            relayed = {k: v for k in RELAYED_RESPONSE_HEADERS
                       if (v := resp.headers.get(k)) is not None}
            ctx.response_headers.update(relayed)
            if resp.status >= 400:
                await self._relay_error(ctx, resp, send, bridge)
            elif req.stream and "text/event-stream" in resp.headers.get("content-type", ""):
                observer = base = (bridge or adapter).observer(req)
                recorder = None
                if plan is not None and plan.write:
                    observer = recorder = StreamRecorder(
                        observer, bridge.upstream_api if bridge else ctx.api, target.wire)
                try:
                    await self._relay_stream(ctx, resp, receive, send,
                                             rt.policies.wrap_stream(ctx, observer))
                finally:
                    if isinstance(base, ResponsesStreamObserver) and bridge is None:
                        # A background stream that ended early keeps running upstream.
                        await rt.background.register(ctx, base.response_id, base.status)
                if recorder is not None and ctx.outcome == "ok":
                    answer_body = recorder.body()
                    if answer_body is not None and bridge is not None:
                        answer_body = bridge.response_body(answer_body,
                                                           orjson.loads(answer_body))[0]
                    ctx.cache_body = answer_body
            else:
                await self._relay_body(ctx, resp, send, bridge)
        finally:
            resp.release()

    def _route(self, ctx: RequestContext) -> Target:
        req = ctx.req
        assert req is not None
        target = self.rt.router.resolve(req.model)
        ctx.upstream, ctx.served_model = target.upstream, target.model
        ctx.provider = target.provider
        if target.model != req.model:
            req.body = {**req.body, "model": target.model}
        if target.wire != ctx.wire:
            # e.g. chat completions served by Claude: reserved at the Claude estimate of the
            # translated request.
            req.input_tokens = self._bridge(ctx, target).count_input()
        return target

    async def _admit(self, ctx: RequestContext, target: Target,
                     send: asgi.ResponseTracker) -> Target | None:
        """Reserve; when a budget is exhausted, try its fallbacks (a cached answer, a cheaper
        model) before refusing. None means the request was answered from the cache."""
        rt, req = self.rt, ctx.req
        assert req is not None
        try:
            ctx.ticket = await rt.admission.reserve(ctx)
            return target
        except BudgetExhausted as exhausted:
            for option in rt.degrader.fallbacks(exhausted.limit):
                plan = ctx.cache_plan
                if option == "cache" and plan is not None and plan.read_on_block:
                    answer = await rt.caching.get(plan)
                    if answer is not None:
                        ctx.block_reason = None
                        ctx.degraded.append("cached")
                        ctx.detail["cached_because"] = exhausted.limit.name
                        await self._send_cached(ctx, answer, send)
                        return None
                cheaper = rt.degrader.cheaper(req.model) if option == "downgrade" else None
                if cheaper is None:
                    continue
                rt.degrader.switch_model(ctx, cheaper, f"{exhausted.limit.name} exhausted")
                target = self._route(ctx)
                ctx.block_reason = None
                try:
                    ctx.ticket = await rt.admission.reserve(ctx)
                    return target
                except BudgetExhausted:
                    continue
            raise

    async def _send_cached(self, ctx: RequestContext, answer: CachedAnswer,
                           send: asgi.ResponseTracker) -> None:
        """Serve a stored answer (replayed as a stream when one was asked for); it costs
        nothing and the ledger records what it saved. Response policies run again."""
        rt, req = self.rt, ctx.req
        assert req is not None
        hit = account_hit(answer, rt.clock.now())
        ctx.usage, ctx.cost_nano, ctx.saved_nano = hit.usage, 0, hit.saved_nano
        ctx.served_model, ctx.cache, ctx.outcome = hit.served_model, "hit", "ok"
        ctx.detail.update(hit.detail)
        ctx.response_headers["x-tokenstile-cache"] = "hit"
        if not req.stream:
            payload = rt.policies.after_body(ctx, answer.body, orjson.loads(answer.body))
            await asgi.send_raw(send, 200, payload, "application/json", self._headers(ctx),
                                ctx.id)
            return
        observer = rt.policies.wrap_stream(ctx, rt.adapters[ctx.wire].observer(req))
        await send.start(200, [(b"content-type", b"text/event-stream; charset=utf-8"),
                               (b"cache-control", b"no-cache"),
                               *asgi.encode_headers(self._headers(ctx), ctx.id)])
        try:
            events = [out for event in replay_events(answer.api, answer.wire, answer.body,
                                                     wants_stream_usage(req))
                      if (out := observer.on_event(event)) is not None]
        except StreamBlocked as blocked:
            ctx.outcome, ctx.status = "blocked", blocked.status
            ctx.block_reason = ctx.block_reason or blocked.code
            await send.body(asgi.sse_error(ctx.wire, blocked), more=True)
        else:
            for chunk in group_events(events):
                await send.body(chunk, more=True)
        ctx.usage = hit.usage  # the observer saw the stored usage; the hit is free
        await send.body(b"", more=False)

    async def _summarize(self, parent: RequestContext, messages: list[dict[str, Any]]) -> str:
        """Older turns summarized by the cheaper model through this gateway: billed to the
        same caller and feature, with a ledger row of its own."""
        rt = self.rt
        assert parent.req is not None
        model = rt.config.degradation.summarize_model or \
            rt.degrader.cheaper(parent.req.model) or parent.req.model
        transcript = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)
        body = {"model": model, "max_tokens": 400, "messages": [
            {"role": "system", "content": "Summarize the conversation below in a few "
             "sentences. Keep facts, names, numbers, decisions and open questions."},
            {"role": "user", "content": transcript}]}
        sub = RequestContext(id=new_request_id(), api="chat", wire="openai",
                             ts=rt.clock.now(), started=rt.clock.monotonic(), headers={})
        sub.caller, sub.provider_key = parent.caller, parent.provider_key
        adapter = rt.adapters["openai"]
        sub.req = adapter.parse("chat", body)
        sub.req.feature, sub.req.tags = parent.req.feature, dict(parent.req.tags)
        sub.req.input_tokens = adapter.count_input(sub.req)
        sub.detail["summary_for"] = parent.id
        try:
            sub.ticket = await rt.admission.reserve(sub, per_request=False)
            resp, _, bridge = await self._open_upstream(sub, self._route(sub))
            try:
                payload = await resp.read()
                sub.status = resp.status
            finally:
                resp.release()
            parsed = answer = orjson.loads(payload) if resp.status == 200 else None
            if bridge is not None and parsed is not None:
                sub.usage = bridge.usage_from_body(parsed)
                payload, parsed = bridge.response_body(payload, parsed)
            elif parsed is not None:
                sub.usage = adapter.usage_from_body("chat", parsed)
            if answer is not None and sub.usage is None:
                bill_counted(sub, answer_text(bridge.upstream_api if bridge else "chat", answer))
            try:
                return str(parsed["choices"][0]["message"]["content"])  # type: ignore[index]
            except (TypeError, KeyError, IndexError):
                sub.outcome = "upstream_error"
                raise GatewayError(502, f"the summary model {model!r} gave no summary; "
                                   "the input is over its budget", type="api_error",
                                   code="summary_failed") from None
        finally:
            await self._finish(sub)

    def _bridge(self, ctx: RequestContext, target: Target) -> Bridge:
        assert ctx.req is not None
        return bridge_for(ctx.api, ctx.wire, target.wire, target.upstream, ctx.req.body,
                          self.rt.config.server.default_output_tokens)

    async def _open_upstream(self, ctx: RequestContext, first: Target
                             ) -> tuple[aiohttp.ClientResponse, Target, Bridge | None]:
        """Send the request; on 429/5xx/timeouts retry with backoff, then go down the
        fallback chain. Returns the response to relay (possibly a final error)."""
        rt, req = self.rt, ctx.req
        assert req is not None
        config = rt.config.resilience
        retries = ctx.detail.get("retries")
        if isinstance(retries, int) and retries != config.retries:
            config = config.model_copy(update={"retries": retries})  # a policy's own count
        requested = req.model
        attempts: list[Attempt] = []
        last_error: GatewayError | None = None
        paid = PaidAttempts(rt, ctx, self._write_row)
        for index, model in enumerate(model_chain(requested, config)):
            target = first if index == 0 else rt.router.resolve(model)
            if index and not self._fallback_fits(ctx, target):
                continue
            if not rt.breakers.allow(target.upstream):
                attempts.append(Attempt(target.upstream, target.model, error="circuit_open"))
                last_error = GatewayError(
                    503, f"upstream {target.upstream!r} is failing and is being left alone "
                         "for a while (circuit open); try again shortly", type="api_error",
                    code="upstream_circuit_open", headers={"retry-after": "5"})
                continue
            if not await paid.allow_another():
                raise self._give_up(ctx, attempts, requested, paid, last_error)
            bridge = self._bridge(ctx, target) if target.wire != ctx.wire else None
            candidate = req if req.body.get("model") == target.model else \
                replace_body(req, {**req.body, "model": target.model})
            payload = orjson.dumps(bridge.upstream_body(candidate) if bridge is not None
                                   else rt.adapters[ctx.wire].upstream_body(candidate))
            url = upstream_url(target.config, bridge.upstream_api if bridge else ctx.api,
                               target.model)
            headers = upstream_headers(target.config, ctx.headers, ctx.provider_key)
            retry = 0
            while True:
                attempt = Attempt(target.upstream, target.model)
                attempts.append(attempt)
                started = ctx.sent_at = rt.clock.monotonic()
                retry_after: float | None = None
                try:
                    resp = await self._post(target, url, payload, headers)
                except GatewayError as err:
                    attempt.error, attempt.ms = err.code, (rt.clock.monotonic() - started) * 1000
                    rt.breakers.failure(target.upstream)
                    last_error = err
                    paid.failed(attempt, target, err, len(attempts))
                else:
                    attempt.status = resp.status
                    attempt.ms = (rt.clock.monotonic() - started) * 1000
                    if resp.status >= 500:
                        rt.breakers.failure(target.upstream)
                    else:
                        rt.breakers.success(target.upstream)
                    if resp.status not in config.retry_on:
                        self._record_attempts(ctx, attempts, target, requested)
                        return resp, target, bridge
                    retry_after = parse_retry_after(resp.headers)
                    final = retry >= config.retries and index == len(
                        model_chain(requested, config)) - 1
                    if final:
                        self._record_attempts(ctx, attempts, target, requested)
                        return resp, target, bridge
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
                    headers: dict[str, str]) -> aiohttp.ClientResponse:
        limit = self.rt.config.resilience.first_byte_timeout_s
        call = self.rt.upstream.post(target.upstream, target.config, url, payload, headers)
        if limit is None:
            return await call
        try:
            return await asyncio.wait_for(call, limit)
        except TimeoutError:
            raise UpstreamTimeout(target.upstream) from None

    def _fallback_fits(self, ctx: RequestContext, target: Target) -> bool:
        """A fallback may not cost more than the reservation made for the first choice.

        One on another wire format (chat served by Claude) is counted with another tokenizer,
        so it is only taken when no limit holds a reservation for this request.
        """
        req = ctx.req
        assert req is not None
        if target.wire != ctx.wire:
            return ctx.api == "chat" and ctx.ticket is None
        ticket = ctx.ticket
        if ticket is None or "usd" not in getattr(ticket, "units", ()):
            return True
        inp = other_inp = req.input_tokens + req.hidden_input_tokens
        if req.hidden_input:  # another model's worst case (its context window) may be larger
            other_inp = self.rt.admission.hidden.worst_case(target.model, req.input_tokens).tokens
        upstreams = self.rt.config.upstreams
        first_upstream = upstreams.get(ctx.upstream or "")
        first = self.rt.pricer.estimate_nano(
            ctx.served_model or req.model, inp, req.output_cap or 0, ctx.provider,
            terms=reservation_terms(req, first_upstream.auto_service_tier
                                    if first_upstream else None))
        other = self.rt.pricer.estimate_nano(
            target.model, other_inp, req.output_cap or 0, target.provider,
            terms=reservation_terms(req, target.config.auto_service_tier))
        return first is not None and other is not None and other <= first

    def _record_attempts(self, ctx: RequestContext, attempts: list[Attempt],
                         target: Target | None, requested: str) -> None:
        if len(attempts) > 1:
            ctx.detail["attempts"] = [a.as_dict() for a in attempts]
        if target is None:
            return
        ctx.upstream, ctx.served_model = target.upstream, target.model
        ctx.provider = target.provider
        assert ctx.req is not None
        if self.rt.router.resolve(requested).model != target.model:
            ctx.degraded.append("fallback")

    async def _relay_body(self, ctx: RequestContext, resp: aiohttp.ClientResponse,
                          send: asgi.ResponseTracker, bridge: Bridge | None = None) -> None:
        assert ctx.req is not None
        try:
            payload = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # A non-streamed answer is generated whole before it is sent: the provider
            # charges for it although it never arrived, so it is billed at its cap.
            bill_counted(ctx, AnswerText(), at_cap=True)
            ctx.outcome = "upstream_cut"
            raise UpstreamTimeout(ctx.upstream or "?") if isinstance(exc, TimeoutError) \
                else GatewayError(502, "the upstream connection broke before the answer was "
                                       "complete", type="api_error", code="upstream_cut") from None
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = None
        answer = parsed  # in the upstream's format
        if bridge is None:
            usage = self.rt.adapters[ctx.wire].usage_from_body(ctx.api, parsed)
        else:
            usage = bridge.usage_from_body(parsed)
            payload, parsed = bridge.response_body(payload, parsed)
        if usage is None:
            bill_counted(ctx, answer_text(bridge.upstream_api if bridge else ctx.api, answer))
        else:
            ctx.usage = usage
        ctx.status = resp.status
        if ctx.api == "responses" and bridge is None and resp.status == 200 and \
                isinstance(parsed, dict):
            # Before the client hears of it: it may fetch (and so settle) it at once.
            await self.rt.background.register(ctx, parsed.get("id"), parsed.get("status"))
        plan = ctx.cache_plan
        if plan is not None and plan.write and resp.status == 200 and isinstance(parsed, dict):
            ctx.cache_body = payload  # as answered, before response policies
        payload = self.rt.policies.after_body(ctx, payload, parsed)
        await asgi.send_raw(send, resp.status, payload,
                            resp.headers.get("content-type", "application/json"),
                            self._headers(ctx), ctx.id)

    async def _relay_error(self, ctx: RequestContext, resp: aiohttp.ClientResponse,
                           send: asgi.ResponseTracker, bridge: Bridge | None = None) -> None:
        """Upstream errors pass through with their status and body (translated to the
        client's format when bridged); they cost nothing."""
        try:
            payload = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            payload = b""
        ctx.status, ctx.outcome = resp.status, "upstream_error"
        ctx.usage = Usage()
        if resp.status == 401 and ctx.provider_key is None:
            # The gateway's own provider key was refused. The upstream's message may quote
            # part of that key, and fixing it is the operator's business, not the client's.
            log.warning("upstream %r refused the gateway's provider key (401)", ctx.upstream)
            err = GatewayError(502, f"upstream {ctx.upstream!r} refused the gateway's own "
                                    "provider key; the gateway's operator must fix it",
                               type="api_error", code="upstream_auth_failed")
            ctx.status = err.status
            await asgi.send_json(send, err.status, err.body(ctx.wire), self._headers(ctx),
                                 ctx.id)
            return
        if not payload:
            err = GatewayError(resp.status, f"upstream {ctx.upstream!r} answered "
                               f"{resp.status} with no body", type="api_error",
                               code="upstream_error")
            payload = err.body(ctx.wire)
        elif bridge is not None:
            payload = bridge.error_body(resp.status, payload)
        content_type = "application/json" if bridge is not None else \
            resp.headers.get("content-type", "application/json")
        await asgi.send_raw(send, resp.status, payload, content_type, self._headers(ctx),
                            ctx.id)

    async def _relay_stream(self, ctx: RequestContext, resp: aiohttp.ClientResponse,
                            receive: asgi.Receive, send: asgi.ResponseTracker,
                            observer: StreamObserver) -> None:
        """Relay whole SSE events as they arrive; stop (and bill) if the client leaves."""
        timed = observer = ReasoningTimer(observer, self.rt.clock)
        ctx.status = resp.status
        await send.start(resp.status, [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            *asgi.encode_headers(self._headers(ctx), ctx.id),
        ])
        splitter = EventSplitter()

        async def pump() -> None:
            async for chunk in resp.content.iter_any():
                out: list[bytes] = []
                try:  # what was relayed before a StreamBlocked still goes out
                    for event in splitter.feed(chunk):
                        if (relay := observer.on_event(event)) is not None:
                            out.append(relay)
                finally:
                    if out:
                        await send.body(b"".join(out), more=True)
            tail = splitter.rest()
            if tail.strip():
                relay = observer.on_event(tail)
                if relay:
                    await send.body(relay, more=True)

        pumping = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(asgi.wait_for_disconnect(receive))
        stalling = asyncio.ensure_future(send.stalled())  # a client that stopped reading
        try:
            await asyncio.wait((pumping, watching, stalling),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            stalling.cancel()
        if not pumping.done():
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumping
            ctx.outcome, ctx.status = "client_disconnect", 499
            self._settle_stream_usage(ctx, timed)
            return
        error = pumping.exception()
        self._settle_stream_usage(ctx, timed)
        if error is not None:
            if isinstance(error, StreamBlocked):
                ctx.outcome, ctx.status = "blocked", error.status
                ctx.block_reason = ctx.block_reason or error.code
                err: GatewayError = error
            elif isinstance(error, aiohttp.ClientError | TimeoutError):
                ctx.outcome = "upstream_cut"
                err = GatewayError(502, "the upstream stream broke off before it was complete",
                                   type="api_error", code="upstream_cut")
            else:
                raise error
            with contextlib.suppress(Exception):
                await send.body(asgi.sse_error(ctx.wire, err), more=True)
        await send.body(b"", more=False)

    async def _send_auto_reply(self, ctx: RequestContext, send: asgi.ResponseTracker) -> None:
        """A policy answered without the upstream: send its reply; it costs nothing."""
        reply = ctx.auto_reply
        assert reply is not None
        ctx.usage, ctx.outcome, ctx.status = Usage(), "auto_reply", reply.status
        await send.start(reply.status, [(b"content-type", reply.content_type.encode()),
                                        *asgi.encode_headers(self._headers(ctx), ctx.id)])
        for chunk in reply.chunks[:-1]:
            await send.body(chunk, more=True)
        await send.body(reply.chunks[-1] if reply.chunks else b"", more=False)

    def _settle_stream_usage(self, ctx: RequestContext, observer: ReasoningTimer) -> None:
        rt = self.rt
        settle_stream(ctx, observer, rt.config.hidden_reasoning, rt.clock.monotonic(),
                      rt.config.server.default_output_tokens)

    def _headers(self, ctx: RequestContext) -> dict[str, str]:
        headers = dict(ctx.response_headers)
        requested = ctx.detail.get("requested_model") or (ctx.req.model if ctx.req else None)
        if ctx.served_model and requested and ctx.served_model != requested:
            headers["x-tokenstile-served-model"] = ctx.served_model
        if ctx.degraded:
            headers["x-tokenstile-degraded"] = ",".join(ctx.degraded)
        return headers

    async def _finish(self, ctx: RequestContext) -> None:
        """Price the call, write its ledger row, then settle the reservation."""
        rt = self.rt
        if ctx.background_running:
            return  # billed, reservation and all, when the response ends (gateway.background)
        price_call(rt.pricer, ctx)
        if ctx.cache_body is not None and ctx.status == 200 and ctx.outcome == "ok" and \
                ctx.cache_plan is not None:
            try:
                await rt.caching.store(ctx, ctx.cache_plan, ctx.cache_body)
            except Exception:
                log.exception("caching the answer of %s failed", ctx.id)
        if ctx.caller is None:
            await self._settle(ctx)
            rt.metrics.unauthenticated(ctx)
            rt.telemetry.finished(ctx, None, rt.router.upstreams)
            return
        latency_ms = (rt.clock.monotonic() - ctx.started) * 1000
        row = ctx.ledger_row(latency_ms)
        # The reservation is what bills this call if the gateway dies before its row is
        # written (claimed and charged at its estimate), so it is settled only then.
        ticket = ctx.ticket
        held = isinstance(ticket, Ticket) and ticket.metered and not ticket.settled
        waiter = self._expect_row(row.id) if held else None
        rt.ledger.submit(row)
        rt.metrics.observe(row)
        rt.telemetry.finished(ctx, row, rt.router.upstreams)
        if waiter is not None:
            await self._until_written(row.id, waiter)
        await self._settle(ctx)

    async def _settle(self, ctx: RequestContext) -> None:
        try:
            await self.rt.admission.settle(ctx)
            self.rt.alert_thresholds(ctx)
        except Exception:
            log.exception("settling request %s failed", ctx.id)

    async def _write_row(self, row: LedgerRow) -> None:
        """A row of its own (an attempt that may have been billed), written before the
        reservation that stands for it is settled."""
        waiter = self._expect_row(row.id)
        self.rt.ledger.submit(row)
        self.rt.metrics.observe(row)
        await self._until_written(row.id, waiter)

    def _expect_row(self, row_id: str) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._written[row_id] = waiter
        return waiter

    async def _until_written(self, row_id: str, waiter: asyncio.Future[None]) -> None:
        """Until the ledger has written the row, at most ``ROW_WAIT_S`` (during a database
        outage the ledger keeps rows in its spool instead)."""
        try:
            await asyncio.wait_for(waiter, ROW_WAIT_S)
        except TimeoutError:
            pass
        finally:
            self._written.pop(row_id, None)

    def _rows_written(self, rows: list[LedgerRow]) -> None:
        if self._written:
            for row in rows:
                waiter = self._written.pop(row.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)


def replace_body(req: CanonicalRequest, body: dict[str, Any]) -> CanonicalRequest:
    """The request with another body (same counts and caps), for one upstream attempt."""
    from dataclasses import replace

    return replace(req, body=body)


def parse_json_object(raw: bytes, max_depth: int,
                      content_type: str | None = None) -> dict[str, Any]:
    if not raw.strip():
        raise bad_request("the request body is empty; expected a JSON object",
                          code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        sent = (content_type or "").partition(";")[0].strip().lower()
        hint = f"; it was sent as {sent[:60]!r}, expected application/json" if sent and \
            not sent.endswith("json") else ""
        raise bad_request(f"the request body is not valid JSON ({exc.msg} at position "
                          f"{exc.pos}){hint}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got "
                          f"{type(body).__name__}", code="invalid_json")
    if json_depth(body, max_depth) > max_depth:
        raise bad_request(f"the request body is nested deeper than {max_depth} levels",
                          code="json_too_deep")
    return body


def check_output_cap(req: CanonicalRequest) -> None:
    """No model writes billions of tokens; a cap past ``MAX_OUTPUT_CAP`` (``max_tokens`` times
    ``n``) is refused before its worst case is priced and sent to the counter store."""
    if req.output_cap is not None and req.output_cap > MAX_OUTPUT_CAP:
        name = req.output_cap_field or "max_tokens"
        raise bad_request(f"the output cap ('{name}', times 'n' when given) is "
                          f"{req.output_cap:,} tokens; at most {MAX_OUTPUT_CAP:,} is accepted",
                          param=name)


def check_message_count(body: dict[str, Any], limit: int) -> None:
    """``server.max_messages`` bounds every list a request is made of, before any of them
    is parsed or counted."""
    for name in ("messages", "input", "prompt"):
        items = body.get(name)
        if isinstance(items, list) and len(items) > limit:
            raise bad_request(f"'{name}' has {len(items):,} items; this gateway accepts at "
                              f"most {limit:,} (server.max_messages)", param=name,
                              code="too_many_messages")


def json_depth(node: Any, limit: int) -> int:
    """Depth of a JSON tree, stopping as soon as ``limit`` is passed."""
    depth = 0
    level: list[Any] = [node]
    while level and depth <= limit:
        depth += 1
        following: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                following.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                following.extend(v for v in item if isinstance(v, dict | list))
        level = following
    return depth


def attribute(ctx: RequestContext) -> None:
    """Feature, tags and trace id from headers; the key's own binding wins for feature."""
    req, caller, headers = ctx.req, ctx.caller, ctx.headers
    assert req is not None and caller is not None
    req.feature = caller.feature or headers.get("x-tokenstile-feature") or None
    raw_tags = headers.get("x-tokenstile-tags")
    if raw_tags:
        for pair in raw_tags.split(",")[:32]:
            name, sep, value = pair.partition("=")
            if sep and name.strip():
                req.tags[name.strip()[:64]] = value.strip()[:256]
    trace = headers.get("x-tokenstile-trace-id") or headers.get("x-usagepanda-trace-id")
    req.trace_id = trace[:128] if trace else None


def check_model_access(ctx: RequestContext) -> None:
    from fnmatch import fnmatchcase

    assert ctx.req is not None and ctx.caller is not None
    allowed = ctx.caller.allowed_models
    if allowed and not any(fnmatchcase(ctx.req.model, pattern) for pattern in allowed):
        ctx.block_reason = "model_not_allowed"
        raise forbidden(f"this key may not use the model {ctx.req.model!r}; it may use "
                        f"{', '.join(allowed)}", code="model_not_allowed")
