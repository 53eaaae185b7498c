"""Everything one request accumulates as it walks the request path."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

from tokenstile.types import ApiKind, Caller, CanonicalRequest, LedgerRow, Usage, WireFormat


@dataclass(frozen=True, slots=True)
class AutoReply:
    """A complete answer produced without calling the upstream (body, or SSE chunks)."""

    chunks: tuple[bytes, ...]
    content_type: str = "application/json"
    status: int = 200


_ids = itertools.count()
_ID_PREFIX = secrets.token_hex(6)


def new_request_id() -> str:
    """Unique across processes (a random per-process prefix) without a syscall per call."""
    return f"req_{_ID_PREFIX}{next(_ids):012x}"


@dataclass(slots=True)
class RequestContext:
    id: str
    api: ApiKind
    wire: WireFormat
    ts: float
    started: float
    headers: dict[str, str]
    caller: Caller | None = None
    req: CanonicalRequest | None = None
    provider_key: str | None = None
    upstream: str | None = None
    provider: str | None = None
    served_model: str | None = None
    status: int = 200
    outcome: str = "ok"
    block_reason: str | None = None
    flags: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    usage: Usage | None = None
    estimated: bool = False
    cost_nano: int = 0
    saved_nano: int = 0
    cache: str | None = None
    ttfb_ms: float | None = None
    sent_at: float | None = None  # clock.monotonic() when the last upstream attempt went
    response_headers: dict[str, str] = field(default_factory=dict)
    ticket: Any = None
    auto_reply: AutoReply | None = None
    cache_plan: Any = None
    cache_body: bytes | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # A Responses API answer: its id, and whether it is a background response that is
    # still running upstream (billed when it ends, not when this request does).
    response_id: str | None = None
    background_running: bool = False

    def ledger_row(self, latency_ms: float) -> LedgerRow:
        caller = self.caller or Caller()
        req = self.req
        usage = self.usage or Usage()
        tags = dict(req.tags) if req else {}
        return LedgerRow(
            id=self.id,
            ts=self.ts,
            key_id=caller.key_id,
            organization=caller.organization,
            project=caller.project,
            team=caller.team or tags.get("team"),
            user=caller.user,
            end_user=req.end_user if req else None,
            feature=(req.feature if req else None) or caller.feature,
            tags=tags,
            api=self.api,
            requested_model=self.detail.get("requested_model") or (req.model if req else None),
            served_model=self.served_model,
            upstream=self.upstream,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            input_audio_tokens=usage.input_audio_tokens,
            output_audio_tokens=usage.output_audio_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            web_search_requests=usage.web_search_requests,
            file_search_calls=usage.file_search_calls,
            service_tier=usage.service_tier,
            cost_nano=self.cost_nano,
            estimated=self.estimated,
            status=self.status,
            outcome=self.outcome,
            block_reason=self.block_reason,
            flags=list(self.flags),
            latency_ms=round(latency_ms, 3),
            ttfb_ms=None if self.ttfb_ms is None else round(self.ttfb_ms, 3),
            streamed=bool(req and req.stream),
            trace_id=req.trace_id if req else None,
            degraded=list(self.degraded),
            cache=self.cache,
            saved_nano=self.saved_nano,
            detail=usage_detail(self.detail, usage),
        )


def set_usage(row: LedgerRow, usage: Usage) -> None:
    """Write a call's usage into a row built before the usage was known."""
    row.input_tokens, row.output_tokens = usage.input_tokens, usage.output_tokens
    row.cached_input_tokens = usage.cached_input_tokens
    row.cache_write_tokens = usage.cache_write_tokens
    row.reasoning_tokens = usage.reasoning_tokens
    row.input_audio_tokens = usage.input_audio_tokens
    row.output_audio_tokens = usage.output_audio_tokens
    row.cache_write_1h_tokens = usage.cache_write_1h_tokens
    row.web_search_requests = usage.web_search_requests
    row.file_search_calls = usage.file_search_calls
    row.service_tier = usage.service_tier


def usage_detail(detail: dict[str, Any], usage: Usage) -> dict[str, Any]:
    """The row's ``detail``, with the rarer usage counts that have no column of their own."""
    out = dict(detail)
    if usage.cached_audio_tokens:
        out["cached_audio_tokens"] = usage.cached_audio_tokens
    if usage.web_fetch_requests:
        out["web_fetch_requests"] = usage.web_fetch_requests
    return out
