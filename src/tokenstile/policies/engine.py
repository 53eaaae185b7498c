"""Runs request and response policies in their fixed order (see tokenstile.policies)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenstile.config import Config

if TYPE_CHECKING:
    from tokenstile.gateway.context import RequestContext
    from tokenstile.providers.base import StreamObserver


class PolicyEngine:
    """Evaluates the configured policies against one request and its response."""

    def __init__(self, config: Config) -> None:
        self.config = config

    async def before(self, ctx: RequestContext) -> None:
        """Request policies: may raise a block (GatewayError), rewrite ``ctx.req.body``, add
        ``ctx.flags``, or answer by setting ``ctx.auto_reply``."""
        return None

    def after_body(self, ctx: RequestContext, payload: bytes, parsed: Any) -> bytes:
        """Response policies on a whole (non-streamed) answer; returns the bytes to send."""
        return payload

    def wrap_stream(self, ctx: RequestContext, observer: StreamObserver) -> StreamObserver:
        """Response policies on a stream: wrap the observer; its ``on_event`` may rewrite
        events or raise StreamBlocked to cut the stream."""
        return observer
