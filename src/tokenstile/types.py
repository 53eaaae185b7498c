"""The shared vocabulary of tokenstile: who calls, what they asked, what it used.

Money is carried everywhere as whole nano-dollars (1e-9 USD) in plain ints, so counters,
ledger sums and comparisons against budgets are exact and never drift with floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

NANO_PER_USD = 1_000_000_000

ApiKind = Literal["chat", "completions", "embeddings", "responses", "messages", "count_tokens"]
WireFormat = Literal["openai", "anthropic"]

Scope = Literal[
    "global", "organization", "project", "team", "user", "tier", "key", "feature", "model",
    "end_user",
]
SCOPES: tuple[Scope, ...] = (
    "global", "organization", "project", "team", "user", "tier", "key", "feature", "model",
    "end_user",
)
Unit = Literal["tokens", "input_tokens", "output_tokens", "requests", "usd"]
UNITS: tuple[Unit, ...] = ("tokens", "input_tokens", "output_tokens", "requests", "usd")
WindowKind = Literal["request", "minute", "hour", "day", "week", "month", "rolling"]


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
    (0 when it allows none, or sets no bound).
    """

    service_tier: str | None = None
    cache_write: str | None = None
    audio_input: bool = False
    audio_output: bool = False
    web_searches: int = 0
    file_searches: int = 0


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
