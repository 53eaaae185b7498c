"""The shared vocabulary of tokenstile: who calls, what they asked, what it used.

Money is carried everywhere as whole nano-dollars (1e-9 USD) in plain ints, so counters,
ledger sums and comparisons against budgets are exact and never drift with floats.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tokenstile.cache.directives import CacheUse
    from tokenstile.cache.flight import Flight
    from tokenstile.gateway.routing import Target
    from tokenstile.limits.model import Limit
    from tokenstile.media import MediaAsk
    from tokenstile.providers.base import Bridge
    from tokenstile.providers.multipart import FilePart
    from tokenstile.stores.counters import Charge

NANO_PER_USD = 1_000_000_000

ApiKind = Literal["chat", "completions", "embeddings", "responses", "messages", "count_tokens",
                  "converse", "moderations", "images", "image_edits", "transcriptions",
                  "speech", "files", "batches", "generate_content", "embed_content",
                  "batch_embed_contents"]
WireFormat = Literal["openai", "anthropic", "bedrock", "gemini"]

Scope = Literal[
    "global", "organization", "project", "team", "user", "tier", "key", "feature", "model",
    "end_user", "run",
]
SCOPES: tuple[Scope, ...] = (
    "global", "organization", "project", "team", "user", "tier", "key", "feature", "model",
    "end_user",
)
Unit = Literal["tokens", "input_tokens", "output_tokens", "requests", "usd"]
UNITS: tuple[Unit, ...] = ("tokens", "input_tokens", "output_tokens", "requests", "usd")
WindowKind = Literal["request", "minute", "hour", "day", "week", "month", "rolling", "run"]


def usd_to_nano(usd: float | int | str) -> int:
    from decimal import Decimal

    return int((Decimal(str(usd)) * NANO_PER_USD).to_integral_value())


def nano_to_usd(nano: int) -> float:
    return nano / NANO_PER_USD


@dataclass(slots=True)
class Usage:
    """What one call used, in OpenAI's convention.

    ``input_tokens`` includes ``cached_input_tokens`` (cache reads), ``cache_write_tokens``
    and ``input_audio_tokens``; ``cached_audio_tokens`` are the audio part of the cache reads
    and ``cache_write_1h_tokens`` the part of the cache writes kept for an hour (Anthropic's
    ``ephemeral_1h_input_tokens``; the rest are 5-minute writes). ``output_tokens`` includes
    ``reasoning_tokens`` and ``output_audio_tokens``. ``web_search_requests``,
    ``web_fetch_requests`` and ``file_search_calls`` count server-side tool calls, which
    some providers bill per call. ``service_tier`` is the tier the provider says served the
    call (``default``, ``flex``, ``priority``, ``standard``…), None when it did not say.
    Calls not billed by text tokens alone (``tokenstile.media``) add what they are billed
    for: ``images`` generated, ``input_image_tokens`` (inside ``input_tokens``) and
    ``output_image_tokens`` (inside ``output_tokens``), ``audio_ms`` of audio transcribed
    and ``characters`` spoken.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cached_audio_tokens: int = 0
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    file_search_calls: int = 0
    service_tier: str | None = None
    images: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    audio_ms: int = 0
    characters: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.input_audio_tokens += other.input_audio_tokens
        self.output_audio_tokens += other.output_audio_tokens
        self.cached_audio_tokens += other.cached_audio_tokens
        self.cache_write_1h_tokens += other.cache_write_1h_tokens
        self.web_search_requests += other.web_search_requests
        self.web_fetch_requests += other.web_fetch_requests
        self.file_search_calls += other.file_search_calls
        self.images += other.images
        self.input_image_tokens += other.input_image_tokens
        self.output_image_tokens += other.output_image_tokens
        self.audio_ms += other.audio_ms
        self.characters += other.characters
        self.service_tier = other.service_tier or self.service_tier

    @property
    def billable_calls(self) -> int:
        """Tool calls billed per call (web and file searches)."""
        return self.web_search_requests + self.file_search_calls


@dataclass(frozen=True, slots=True)
class PriceTerms:
    """What a request may be billed for beyond plain text tokens, read from its body before
    the call, so that its reservation can hold the worst case.

    ``service_tier`` is the tier asked for (None: the provider's default, ``auto``, which
    may be served at a pricier tier). ``cache_write`` is the longest cache lifetime the
    request's ``cache_control`` asks for (``5m`` or ``1h``): its input may be written to
    the cache at that premium. ``audio_input`` / ``audio_output``: audio may be read or
    written. ``web_searches`` / ``file_searches``: the most such calls the request allows
    (0 when it allows none, or sets no bound). ``media``: what a call that is not billed by
    text tokens alone asks for (images, audio, batches), priced by ``tokenstile.media``.
    """

    service_tier: str | None = None
    cache_write: str | None = None
    audio_input: bool = False
    audio_output: bool = False
    web_searches: int = 0
    file_searches: int = 0
    media: MediaAsk | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as established by authentication."""

    organization: str = "default"
    project: str | None = None
    team: str | None = None
    user: str | None = None
    tier: str | None = None
    key_id: str | None = None
    key_name: str | None = None
    feature: str | None = None
    allowed_models: tuple[str, ...] | None = None
    passthrough: bool = False
    is_admin: bool = False


@dataclass(slots=True)
class CanonicalRequest:
    """One provider-neutral view of a request body; ``body`` is what gets forwarded."""

    api: ApiKind
    wire: WireFormat
    model: str
    body: dict[str, Any]
    stream: bool = False
    output_cap: int | None = None
    output_cap_field: str | None = None
    end_user: str | None = None
    input_text: str = ""
    system_text: str = ""
    input_tokens: int = 0
    # Input the gateway cannot count (``hidden_input.hidden_sources``), and the tokens
    # admission reserved for it on top of ``input_tokens``.
    hidden_input: tuple[str, ...] = ()
    hidden_input_tokens: int = 0
    feature: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    trace_id: str | None = None
    terms: PriceTerms | None = None
    # An agent run or user session (``x-tokenstile-run``) and the budget its header asks
    # for (unit, amount), if any: see ``limits/runs.py``.
    run: str | None = None
    run_budget: tuple[Unit, int] | None = None
    # Images, audio and batches (``tokenstile.media``): what the call may be billed for.
    media: MediaAsk | None = None
    # A multipart request's files (None: a JSON body), forwarded with ``body``'s fields.
    files: tuple[FilePart, ...] | None = None


@dataclass(slots=True)
class LedgerRow:
    """One row of the ledger: everything that is known about one call."""

    id: str
    ts: float
    key_id: str | None = None
    organization: str | None = None
    project: str | None = None
    team: str | None = None
    user: str | None = None
    end_user: str | None = None
    feature: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    api: str = "chat"
    requested_model: str | None = None
    served_model: str | None = None
    upstream: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0
    file_search_calls: int = 0
    service_tier: str | None = None
    cost_nano: int = 0
    estimated: bool = False
    status: int = 200
    outcome: str = "ok"
    block_reason: str | None = None
    flags: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    streamed: bool = False
    trace_id: str | None = None
    degraded: list[str] = field(default_factory=list)
    cache: str | None = None
    saved_nano: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    def __post_init__(self) -> None:
        # Kept to the microsecond, as PostgreSQL keeps timestamps: a call a fraction of a
        # microsecond before midnight falls in the same day on every backend.
        self.ts = round(self.ts, 6)

    @property
    def provisional(self) -> bool:
        """Written at its estimate for a reservation its request never settled (crash
        recovery: ``unsettled``). The row the request itself writes under the same id
        replaces it, whichever of the two is written first."""
        return self.outcome == "unsettled" and self.estimated


def one_per_id(rows: Sequence[LedgerRow]) -> list[LedgerRow]:
    """The rows of a batch to write, one per id: the first, or a later final row in place
    of a provisional one (the ledger then keeps it over a provisional one already there)."""
    chosen: dict[str, LedgerRow] = {}
    for row in rows:
        seen = chosen.get(row.id)
        if seen is None or (seen.provisional and not row.provisional):
            chosen[row.id] = row
    return list(chosen.values())


# -- one request on the request path --------------------------------------------------------

_ids = itertools.count()
_ID_PREFIX = secrets.token_hex(6)


def new_request_id() -> str:
    """Unique across processes (a random per-process prefix) without a syscall per call."""
    return f"req_{_ID_PREFIX}{next(_ids):012x}"


@dataclass(frozen=True, slots=True)
class AutoReply:
    """A complete answer produced without calling the upstream (body, or SSE chunks)."""

    chunks: tuple[bytes, ...]
    content_type: str = "application/json"
    status: int = 200


@dataclass(slots=True)
class Applied:
    """One limit as it applies to one request, with its counter (if it has one)."""

    limit: Limit
    scope_id: str
    hard: int
    key: str = ""
    charge_index: int = -1
    used: int = 0
    amount: int = 0
    tenant: str | None = None  # whose counters, on a store sharded by tenant


@dataclass(slots=True)
class Ticket:
    """A reservation: the worst case held on each counter (``charges``, in ``units``) under
    the reservation id ``rid``, until it is settled with what was used."""

    rid: str
    charges: list[Charge]
    units: list[Unit]
    applied: list[Applied] = field(default_factory=list)
    metered: bool = True
    settled: bool = False

    @property
    def held(self) -> bool:
        """Counted on the store and not settled yet: it bills the call if the gateway dies."""
        return self.metered and not self.settled


@dataclass(frozen=True, slots=True)
class CachePlan:
    """How one request uses the response cache: its lookup key (None: not cacheable), where
    and how long answers are kept, the rule's mode and what the client allows."""

    lookup: str | None
    namespace: str
    ttl_s: float
    mode: str
    use: CacheUse

    @property
    def read_now(self) -> bool:
        return self.mode == "always" and self.use.read and self.lookup is not None

    @property
    def read_on_block(self) -> bool:
        return self.use.read and self.lookup is not None

    @property
    def write(self) -> bool:
        return self.use.write and self.lookup is not None


@dataclass(slots=True, kw_only=True)
class Arrival:
    """A request as it arrives, before its body is read: enough to refuse it and to record
    the refusal. ``caller`` is set once the key is checked."""

    id: str
    api: ApiKind
    wire: WireFormat
    ts: float
    started: float
    headers: dict[str, str]
    # Body fields the route's URL carries (Bedrock's and Gemini's model id, and whether it
    # streams).
    route_fields: dict[str, Any] | None = None
    caller: Caller | None = None
    provider_key: str | None = None
    status: int = 200
    outcome: str = "ok"
    block_reason: str | None = None
    flags: list[str] = field(default_factory=list)
    response_headers: dict[str, str] = field(default_factory=dict)

    def ledger_row(self, latency_ms: float) -> LedgerRow:
        """The row of a call refused before its body was understood: it used nothing."""
        caller = self.caller or Caller()
        return LedgerRow(
            id=self.id, ts=self.ts, key_id=caller.key_id, organization=caller.organization,
            project=caller.project, team=caller.team, user=caller.user,
            feature=caller.feature, api=self.api, status=self.status, outcome=self.outcome,
            block_reason=self.block_reason, flags=list(self.flags),
            latency_ms=round(latency_ms, 3),
        )


@dataclass(slots=True, kw_only=True)
class RequestContext(Arrival):
    """Everything one understood request accumulates on the request path, stage by stage.

    The named fields from ``requested_model`` on are what the stages note about the request
    for the ledger row's ``detail`` (``detail()``).
    """

    caller: Caller
    req: CanonicalRequest
    upstream: str | None = None
    provider: str | None = None
    served_model: str | None = None
    degraded: list[str] = field(default_factory=list)
    usage: Usage | None = None
    estimated: bool = False
    cost_nano: int = 0
    saved_nano: int = 0
    cache: str | None = None
    ttfb_ms: float | None = None
    sent_at: float | None = None  # clock.monotonic() when the last upstream attempt went
    ticket: Ticket | None = None
    auto_reply: AutoReply | None = None
    cache_plan: CachePlan | None = None
    cache_body: bytes | None = None
    cache_flight: Flight | None = None  # the identical misses this request answers for
    # The bridge routing made to count a translated request's input, for the target it was
    # made for: the first attempt at that target forwards through it (not translated twice).
    routed_bridge: tuple[Target, Bridge] | None = None
    # A Responses API answer: its id, and whether it is a background response that is
    # still running upstream (billed when it ends, not when this request does).
    response_id: str | None = None
    background_running: bool = False
    # -- notes for the ledger row's detail --
    background: bool = False
    requested_model: str | None = None
    downgraded: str | None = None
    trimmed_messages: int | None = None
    truncated: bool = False
    summarized_messages: int | None = None
    summary_for: str | None = None
    queue_ms: float | None = None
    cached_because: str | None = None
    cache_hit: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] | None = None
    retries: int | None = None
    retry_refused: str | None = None
    moderation: dict[str, Any] | None = None
    policies: list[dict[str, Any]] = field(default_factory=list)
    hidden_input: dict[str, Any] | None = None

    @classmethod
    def begin(cls, arrival: Arrival, caller: Caller, req: CanonicalRequest) -> RequestContext:
        """The arrival, now that its caller is known and its body parsed."""
        return cls(id=arrival.id, api=arrival.api, wire=arrival.wire, ts=arrival.ts,
                   started=arrival.started, headers=arrival.headers,
                   route_fields=arrival.route_fields, caller=caller, req=req,
                   provider_key=arrival.provider_key, status=arrival.status,
                   outcome=arrival.outcome, block_reason=arrival.block_reason,
                   flags=arrival.flags, response_headers=arrival.response_headers)

    @property
    def model(self) -> str:
        """The model that serves the request (the one asked for until it is routed)."""
        return self.served_model or self.req.model

    def detail(self) -> dict[str, Any]:
        """What the stages noted, under the ledger's ``detail`` names (set ones only)."""
        out: dict[str, Any] = {}
        if self.background:
            out["background"] = True
        if self.requested_model is not None:
            out["requested_model"] = self.requested_model
        if self.downgraded is not None:
            out["downgraded"] = self.downgraded
        if self.trimmed_messages is not None:
            out["trimmed_messages"] = self.trimmed_messages
        if self.truncated:
            out["truncated"] = True
        if self.summarized_messages is not None:
            out["summarized_messages"] = self.summarized_messages
        if self.summary_for is not None:
            out["summary_for"] = self.summary_for
        if self.queue_ms is not None:
            out["queue_ms"] = self.queue_ms
        if self.cached_because is not None:
            out["cached_because"] = self.cached_because
        if self.cache_hit:
            out.update(self.cache_hit)
        if self.attempts:
            out["attempts"] = self.attempts
        if self.retries is not None:
            out["retries"] = self.retries
        if self.retry_refused is not None:
            out["retry_refused"] = self.retry_refused
        if self.moderation is not None:
            out["moderation"] = self.moderation
        if self.policies:
            out["policies"] = self.policies
        if self.hidden_input is not None:
            out["hidden_input"] = self.hidden_input
        return out

    def ledger_row(self, latency_ms: float) -> LedgerRow:
        row = Arrival.ledger_row(self, latency_ms)
        req, usage, tags = self.req, self.usage or Usage(), dict(self.req.tags)
        row.team = self.caller.team or tags.get("team")
        row.end_user, row.tags = req.end_user, tags
        row.feature = req.feature or self.caller.feature
        row.requested_model = self.requested_model or req.model
        row.served_model, row.upstream = self.served_model, self.upstream
        set_usage(row, usage)
        row.cost_nano, row.estimated, row.saved_nano = self.cost_nano, self.estimated, \
            self.saved_nano
        row.ttfb_ms = None if self.ttfb_ms is None else round(self.ttfb_ms, 3)
        row.streamed, row.trace_id, row.run_id = req.stream, req.trace_id, req.run
        row.degraded, row.cache = list(self.degraded), self.cache
        row.detail.update(self.detail())
        return row


def set_usage(row: LedgerRow, usage: Usage) -> None:
    """Write a call's usage into a row built before the usage was known (the rarer counts,
    which have no column of their own, into its ``detail``)."""
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
    if usage.cached_audio_tokens:
        row.detail["cached_audio_tokens"] = usage.cached_audio_tokens
    if usage.web_fetch_requests:
        row.detail["web_fetch_requests"] = usage.web_fetch_requests
    for name in ("images", "input_image_tokens", "output_image_tokens", "audio_ms",
                 "characters"):
        if value := getattr(usage, name):
            row.detail[name] = value
