"""The shared vocabulary of tokenstile: who calls, what they asked, what it used.

Money is carried everywhere as whole nano-dollars (1e-9 USD) in plain ints, so counters,
ledger sums and comparisons against budgets are exact and never drift with floats.
"""

from __future__ import annotations

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
    """Tokens one call used, in OpenAI's convention.

    ``input_tokens`` includes ``cached_input_tokens`` (cache reads) and
    ``cache_write_tokens``; ``output_tokens`` includes ``reasoning_tokens``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens


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
