"""Relay: send the client its answer and count what it used.

An upstream answer goes back whole (``body``), as whole SSE events while they arrive
(``stream``, stopping and billing what was written when the client leaves), or as an
error passed through (``error``, free). Answers the gateway gives itself go out the same
way: a policy's auto-reply (``auto_reply``) and a cached answer (``cached``, replayed as a
stream when one was asked for). Response policies see every answer; usage comes from the
answer, or is counted from what was written when the upstream did not say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import orjson

from tokenstile.cache import (
    CachedAnswer,
    StreamRecorder,
    account_hit,
    group_events,
    replay_events,
    wants_stream_usage,
)
from tokenstile.errors import GatewayError, StreamBlocked
from tokenstile.gateway import asgi
from tokenstile.gateway.counted import ReasoningTimer, bill_counted, settle_stream
from tokenstile.gateway.upstream import RELAYED_RESPONSE_HEADERS, UpstreamTimeout
from tokenstile.gateway.upstream_response import BODY_ERRORS, UpstreamResponse
from tokenstile.providers import eventstream
from tokenstile.providers.answers import AnswerText, answer_text
from tokenstile.providers.eventstream import FrameSplitter, StreamFramingError
from tokenstile.providers.gemini import key_refused
from tokenstile.providers.media import usage_of_answer as media_usage
from tokenstile.providers.media import worst_case_usage
from tokenstile.providers.openai import ResponsesStreamObserver
from tokenstile.providers.sse import EventSplitter
from tokenstile.types import RequestContext, Usage, WireFormat

if TYPE_CHECKING:
    from tokenstile.clock import Clock
    from tokenstile.config import HiddenReasoningConfig
    from tokenstile.gateway.background import BackgroundResponses
    from tokenstile.gateway.batches import Batches
    from tokenstile.gateway.forward import Opened
    from tokenstile.policies.engine import PolicyEngine
    from tokenstile.providers.base import Adapter, Bridge, StreamObserver

log = logging.getLogger("tokenstile.gateway")


class Relay:
    def __init__(self, policies: PolicyEngine, adapters: dict[WireFormat, Adapter],
                 background: BackgroundResponses, batches: Batches, clock: Clock,
                 hidden_reasoning: HiddenReasoningConfig, default_output_tokens: int) -> None:
        self.policies = policies
        self.adapters = adapters
        self.background = background
        self.batches = batches
        self.clock = clock
        self.hidden_reasoning = hidden_reasoning
        self.default_output_tokens = default_output_tokens

    async def upstream_answer(self, ctx: RequestContext, opened: Opened,
                              receive: asgi.Receive, send: asgi.ResponseTracker) -> None:
        """Relay what the upstream answered, whichever way it answered."""
        resp, bridge = opened.response, opened.bridge
        try:
            ctx.ttfb_ms = (self.clock.monotonic() - ctx.started) * 1000
            ctx.response_headers.update({k: v for k in RELAYED_RESPONSE_HEADERS
                                         if (v := resp.headers.get(k)) is not None})
            if resp.status >= 400:
                await self.error(ctx, resp, send, bridge, opened.target.wire)
            elif ctx.req.stream and is_stream(resp.headers.get("content-type", "")):
                await self._stream_answer(ctx, opened, receive, send)
            else:
                await self.body(ctx, resp, send, bridge)
        finally:
            resp.release()

    async def _stream_answer(self, ctx: RequestContext, opened: Opened,
                             receive: asgi.Receive, send: asgi.ResponseTracker) -> None:
        bridge, plan = opened.bridge, ctx.cache_plan
        observer = base = (bridge or self.adapters[ctx.wire]).observer(ctx.req)
        recorder = None
        if plan is not None and plan.write:
            observer = recorder = StreamRecorder(
                observer, bridge.upstream_api if bridge else ctx.api, opened.target.wire)
        try:
            await self.stream(ctx, opened.response, receive, send,
                              self.policies.wrap_stream(ctx, observer), opened.target.wire)
        finally:
            if isinstance(base, ResponsesStreamObserver) and bridge is None:
                # A background stream that ended early keeps running upstream.
                await self.background.register(ctx, base.response_id, base.status)
        if recorder is not None and ctx.outcome == "ok":
            answer_body = recorder.body()
            if answer_body is not None and bridge is not None:
                answer_body = bridge.response_body(answer_body, orjson.loads(answer_body))[0]
            ctx.cache_body = answer_body

    async def body(self, ctx: RequestContext, resp: UpstreamResponse,
                   send: asgi.ResponseTracker, bridge: Bridge | None = None) -> None:
        try:
            payload = await resp.read()
        except BODY_ERRORS as exc:
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
        usage: Usage | None
        if ctx.req.media is not None and resp.status < 400:
            # Images, audio, moderations: billed by what the answer (or the request) says.
            usage, estimated = media_usage(ctx.req, payload, parsed)
            ctx.estimated = ctx.estimated or estimated
        elif bridge is None:
            usage = self.adapters[ctx.wire].usage_from_body(ctx.api, parsed)
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
            await self.background.register(ctx, parsed.get("id"), parsed.get("status"))
        elif ctx.api in ("files", "batches") and resp.status == 200:
            await self.batches.answered(ctx, parsed)  # a batch is billed when it ends
        plan = ctx.cache_plan
        if plan is not None and plan.write and resp.status == 200 and isinstance(parsed, dict):
            ctx.cache_body = payload  # as answered, before response policies
        payload = self.policies.after_body(ctx, payload, parsed)
        await asgi.send_raw(send, resp.status, payload,
                            resp.headers.get("content-type", "application/json"),
                            headers(ctx), ctx.id)

    async def error(self, ctx: RequestContext, resp: UpstreamResponse,
                    send: asgi.ResponseTracker, bridge: Bridge | None = None,
                    upstream_wire: WireFormat = "openai") -> None:
        """Upstream errors pass through with their status and body (translated to the
        client's format when bridged); they cost nothing."""
        try:
            payload = await resp.read()
        except BODY_ERRORS:
            payload = b""
        ctx.status, ctx.outcome = resp.status, "upstream_error"
        ctx.usage = Usage()
        if ctx.provider_key is None and (refused_credentials(resp) or (
                upstream_wire == "gemini" and key_refused(resp.status, payload))):
            # The gateway's own provider key was refused. The upstream's message may quote
            # part of that key, and fixing it is the operator's business, not the client's.
            log.warning("upstream %r refused the gateway's provider key (%s)", ctx.upstream,
                        resp.status)
            err = GatewayError(502, f"upstream {ctx.upstream!r} refused the gateway's own "
                                    "provider key; the gateway's operator must fix it",
                               type="api_error", code="upstream_auth_failed")
            ctx.status = err.status
            ctx.response_headers.pop("x-amzn-errortype", None)
            await asgi.send_json(send, err.status, err.body(ctx.wire),
                                 {**headers(ctx), **err.headers_for(ctx.wire)}, ctx.id)
            return
        if not payload:
            err = GatewayError(resp.status, f"upstream {ctx.upstream!r} answered "
                               f"{resp.status} with no body", type="api_error",
                               code="upstream_error")
            payload = err.body(ctx.wire)
            ctx.response_headers.update(err.headers_for(ctx.wire))
        elif bridge is not None:
            payload = bridge.error_body(resp.status, payload)
            if ctx.wire != "bedrock":
                ctx.response_headers.pop("x-amzn-errortype", None)
        content_type = "application/json" if bridge is not None else \
            resp.headers.get("content-type", "application/json")
        await asgi.send_raw(send, resp.status, payload, content_type, headers(ctx), ctx.id)

    async def stream(self, ctx: RequestContext, resp: UpstreamResponse,
                     receive: asgi.Receive, send: asgi.ResponseTracker,
                     observer: StreamObserver, upstream_wire: WireFormat = "openai") -> None:
        """Relay whole events (SSE events, or Bedrock's event stream frames) as they arrive;
        stop (and bill) if the client leaves."""
        timed = observer = ReasoningTimer(observer, self.clock)
        ctx.status = resp.status
        await send.start(resp.status, [
            (b"content-type", stream_content_type(ctx.wire)),
            (b"cache-control", b"no-cache"),
            *asgi.encode_headers(headers(ctx), ctx.id),
        ])
        splitter: EventSplitter | FrameSplitter = FrameSplitter() \
            if upstream_wire == "bedrock" else EventSplitter()

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
            self._count_stream(ctx, timed)
            return
        error = pumping.exception()
        self._count_stream(ctx, timed)
        if error is not None:
            if isinstance(error, StreamBlocked):
                ctx.outcome, ctx.status = "blocked", error.status
                ctx.block_reason = ctx.block_reason or error.code
                err: GatewayError = error
            elif isinstance(error, (*BODY_ERRORS, StreamFramingError)):
                ctx.outcome = "upstream_cut"
                err = GatewayError(502, "the upstream stream broke off before it was complete",
                                   type="api_error", code="upstream_cut")
            else:
                raise error
            with contextlib.suppress(Exception):
                await send.body(asgi.sse_error(ctx.wire, err), more=True)
        await send.body(b"", more=False)

    def _count_stream(self, ctx: RequestContext, observer: ReasoningTimer) -> None:
        if ctx.req.media is not None:  # images, audio: no final usage, the worst case
            final = observer.usage if observer.usage_is_final() else None
            ctx.usage = final or worst_case_usage(ctx.req)
            ctx.estimated = ctx.estimated or final is None
            return
        settle_stream(ctx, observer, self.hidden_reasoning, self.clock.monotonic(),
                      self.default_output_tokens)

    async def auto_reply(self, ctx: RequestContext, send: asgi.ResponseTracker) -> None:
        """A policy answered without the upstream: send its reply; it costs nothing."""
        reply = ctx.auto_reply
        assert reply is not None
        ctx.usage, ctx.outcome, ctx.status = Usage(), "auto_reply", reply.status
        await send.start(reply.status, [(b"content-type", reply.content_type.encode()),
                                        *asgi.encode_headers(headers(ctx), ctx.id)])
        for chunk in reply.chunks[:-1]:
            await send.body(chunk, more=True)
        await send.body(reply.chunks[-1] if reply.chunks else b"", more=False)

    async def cached(self, ctx: RequestContext, answer: CachedAnswer,
                     send: asgi.ResponseTracker) -> None:
        """Serve a stored answer (replayed as a stream when one was asked for); it costs
        nothing and the ledger records what it saved. Response policies run again."""
        req = ctx.req
        hit = account_hit(answer, self.clock.now())
        ctx.usage, ctx.cost_nano, ctx.saved_nano = hit.usage, 0, hit.saved_nano
        ctx.served_model, ctx.cache, ctx.outcome = hit.served_model, "hit", "ok"
        ctx.cache_hit = hit.detail
        ctx.response_headers["x-tokenstile-cache"] = "hit"
        if not req.stream:
            payload = self.policies.after_body(ctx, answer.body, orjson.loads(answer.body))
            await asgi.send_raw(send, 200, payload, "application/json", headers(ctx), ctx.id)
            return
        observer = self.policies.wrap_stream(ctx, self.adapters[ctx.wire].observer(req))
        await send.start(200, [(b"content-type", stream_content_type(ctx.wire)),
                               (b"cache-control", b"no-cache"),
                               *asgi.encode_headers(headers(ctx), ctx.id)])
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


def is_stream(content_type: str) -> bool:
    return "text/event-stream" in content_type or eventstream.CONTENT_TYPE in content_type


def stream_content_type(wire: WireFormat) -> bytes:
    return eventstream.CONTENT_TYPE.encode() if wire == "bedrock" \
        else b"text/event-stream; charset=utf-8"


# What an upstream answers when the gateway's own credentials are refused: 401, or 403 with
# one of AWS's authentication errors (Bedrock).
_AWS_AUTH_ERRORS = frozenset({"UnrecognizedClientException", "InvalidSignatureException",
                              "ExpiredTokenException", "MissingAuthenticationTokenException",
                              "IncompleteSignatureException"})


def refused_credentials(resp: UpstreamResponse) -> bool:
    if resp.status == 401:
        return True
    kind = resp.headers.get("x-amzn-errortype", "").partition(":")[0]
    return resp.status == 403 and kind in _AWS_AUTH_ERRORS


def headers(ctx: RequestContext) -> dict[str, str]:
    """The response headers the gateway adds: its own, and what it changed."""
    out = dict(ctx.response_headers)
    requested = ctx.requested_model or ctx.req.model
    if ctx.served_model and ctx.served_model != requested:
        out["x-tokenstile-served-model"] = ctx.served_model
    if ctx.degraded:
        out["x-tokenstile-degraded"] = ",".join(ctx.degraded)
    return out
