"""The configuration: one YAML file, validated by pydantic, with ``${ENV}`` interpolation.

With no file at all a zero-config default serves: OpenAI upstream from ``OPENAI_API_KEY`` /
``OPENAI_BASE_URL`` (and Anthropic from ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``), SQLite
at ``./tokenstile.db``. The budget sections accept the shapes users already write (the
``organization`` / ``projects`` / ``users`` / ``alerts`` of a ``token_limits.yaml``) next to
the general ``limits`` list.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tokenstile.policies.schema import PoliciesConfig
from tokenstile.types import SCOPES, UNITS

DEFAULT_PORT = 8700
DEFAULT_DB_URL = "sqlite:///./tokenstile.db"
OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE = "https://api.anthropic.com"
# Google's Gemini API (kind: gemini), when an upstream names no base_url.
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
_BEDROCK_HOST = re.compile(r"^https://bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
_AWS_FIELDS = ("region", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
               "aws_profile")


class ConfigError(Exception):
    """A configuration that cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    admin_key: str | None = None
    admin_host: str | None = None
    admin_port: int | None = Field(None, ge=0, le=65535)
    timezone: str = "UTC"
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(64, ge=4, le=10_000)
    max_messages: int = Field(4096, ge=1)
    # Hostile clients: request line + headers (431 past it), time to send the headers and
    # the body (408 past them; a client sending a byte a second is cut off).
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    # A client that stops reading its answer for this long is treated as gone.
    write_timeout_s: float = Field(60.0, gt=0)
    log_bodies: bool = False
    reservation_lease_s: float = Field(60.0, gt=0)
    default_output_tokens: int = Field(4096, ge=1)
    low_priority_fraction: float = Field(0.8, gt=0, le=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class StorageConfig(_Strict):
    counters: str = DEFAULT_DB_URL
    database: str = DEFAULT_DB_URL
    spool_dir: str | None = None  # where ledger rows wait while the database is down


class AuthConfig(_Strict):
    """How callers prove who they are.

    ``keys``: only tokenstile keys. ``passthrough``: callers send their own provider key,
    which is forwarded; they are attributed to ``passthrough_project``. ``both``: a
    tokenstile key when it looks like one, else passthrough.
    """

    mode: Literal["keys", "passthrough", "both"] = "keys"
    passthrough_organization: str = "default"
    passthrough_project: str = "passthrough"
    key_cache_ttl_s: float = Field(1.0, ge=0, le=60)
    migration_mode: bool = False


class UpstreamConfig(_Strict):
    kind: Literal["openai", "azure", "anthropic", "bedrock", "gemini"] = "openai"
    base_url: str
    api_key: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(600.0, gt=0)
    max_connections: int = Field(512, ge=1)
    keepalive_s: float = Field(15.0, gt=0)
    # Whose prices its calls are billed at (a genai-prices provider id, e.g. groq); unset:
    # known from base_url, else from kind.
    provider: str | None = None
    # The service tier this upstream serves a request that leaves it open (no tier, or
    # auto); unset: such requests are reserved at the model's priciest tier.
    auto_service_tier: str | None = None
    # Streamed chat and completions ask this upstream for a final usage chunk
    # (``stream_options.include_usage``); false for a server that refuses the field: its
    # streams are then billed from their usage if they carry one, else from their text.
    stream_usage: bool = True
    # Bedrock (kind: bedrock): the region its calls are signed for, and AWS credentials;
    # without keys here, botocore's own chain (AWS_* variables, profiles, instance roles).
    region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    aws_profile: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bedrock(cls, data: Any) -> Any:
        """Bedrock's address from its region (or its region from its address); Gemini's
        default address."""
        if not isinstance(data, dict):
            return data
        if data.get("kind") == "gemini" and not data.get("base_url"):
            data = {**data, "base_url": GEMINI_BASE_URL}
        if data.get("kind") != "bedrock":
            named = [f for f in _AWS_FIELDS if data.get(f) is not None]
            if named:
                raise ValueError(f"{', '.join(named)}: only for upstreams of kind bedrock")
            return data
        data = dict(data)
        region, base = data.get("region"), data.get("base_url")
        if not base:
            if not region:
                raise ValueError("kind bedrock needs a region (e.g. region: us-east-1) or a "
                                 "base_url")
            data["base_url"] = f"https://bedrock-runtime.{region}.amazonaws.com"
        elif not region:
            match = _BEDROCK_HOST.match(str(base))
            if match is None:
                raise ValueError(f"kind bedrock: base_url {base!r} names no AWS region; set "
                                 "region (the region requests are signed for)")
            data["region"] = match.group(1)
        if (data.get("aws_access_key_id") is None) != (data.get("aws_secret_access_key")
                                                       is None):
            raise ValueError("aws_access_key_id and aws_secret_access_key go together")
        return data

    @model_validator(mode="after")
    def _stream_usage_on_openai_wires(self) -> UpstreamConfig:
        if not self.stream_usage and self.kind not in ("openai", "azure"):
            raise ValueError(f"stream_usage: only for OpenAI-compatible upstreams (kind openai "
                             f"or azure); a {self.kind} upstream reports usage by itself")
        return self

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")


class RouteConfig(_Strict):
    """Send models matching ``match`` (exact or glob) to ``upstream``, optionally renamed."""

    match: str
    upstream: str
    model: str | None = None


class _Prices(_Strict):
    """Prices in USD per million tokens (per call for ``per_request``, ``web_search``,
    ``file_search``), each optional."""

    input: float | None = Field(None, ge=0)
    output: float | None = Field(None, ge=0)
    cached_input: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)
    cache_write_1h: float | None = Field(None, ge=0)
    input_audio: float | None = Field(None, ge=0)
    output_audio: float | None = Field(None, ge=0)
    cached_audio_input: float | None = Field(None, ge=0)
    reasoning: float | None = Field(None, ge=0)
    per_request: float | None = Field(None, ge=0)
    web_search: float | None = Field(None, ge=0)
    file_search: float | None = Field(None, ge=0)


class PriceTierConfig(_Prices):
    """The prices that differ at one service tier (USD per million tokens; per call for
    ``per_request``, ``web_search``, ``file_search``); the others are the model's own."""


class PriceConfig(_Prices):
    """USD per million tokens (USD per call for ``per_request``, ``web_search`` and
    ``file_search``)."""

    input: float = Field(ge=0)
    output: float = Field(0, ge=0)
    per_request: float = Field(0, ge=0)
    service_tiers: dict[str, PriceTierConfig] = Field(default_factory=dict)
    # From when this price applies (a date is midnight UTC); unset: from the beginning.
    effective_from: date | datetime | None = None


class PriceAdjustmentConfig(_Strict):
    """A negotiated discount on the prices of matching models (whatever their source: the
    genai-prices table or ``prices:``), from ``effective_from`` until ``effective_until``."""

    provider: str | None = None
    model: str = "*"
    discount_percent: float = Field(gt=-1000, le=100)
    effective_from: date | datetime | None = None
    effective_until: date | datetime | None = None


class FallbackPriceConfig(_Strict):
    """The price a limit counts a model at when no price is known for it."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class ReconcileProviderConfig(_Strict):
    """Where and how to read one provider's own usage and cost reports."""

    admin_key: str | None = None
    base_url: str | None = None
    # The ledger's upstreams whose calls this provider served; unset: every upstream of
    # this provider (by its kind, provider or address).
    upstreams: list[str] | None = None
    # Count only these in the provider's reports (usage from outside the gateway is not
    # drift): OpenAI project ids, Anthropic workspace ids, either's API key ids.
    project_ids: list[str] = Field(default_factory=list)
    workspace_ids: list[str] = Field(default_factory=list)
    api_key_ids: list[str] = Field(default_factory=list)
    timeout_s: float = Field(60.0, gt=0)


class ReconcileConfig(_Strict):
    """``tokenstile reconcile``: the providers' reports against the ledger."""

    openai: ReconcileProviderConfig | None = None
    anthropic: ReconcileProviderConfig | None = None
    # A day × model whose drift passes every threshold set here raises an alert.
    alert_above_usd: float | None = Field(1.0, ge=0)
    alert_above_percent: float | None = Field(None, ge=0)
    channels: list[str] = Field(default_factory=list)


N = TypeVar("N", int, float)


def _non_negative_values(value: dict[str, N], what: str) -> dict[str, N]:
    """A per-model table of numbers, each at least 0 (``what`` names them in the error)."""
    for model, number in value.items():
        if number < 0:
            raise ValueError(f"{model!r}: expected {what} >= 0, got {number}")
    return value


def _one_of(value: str, what: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


class HiddenInputConfig(_Strict):
    """Input a request brings that the gateway cannot count before the call
    (``previous_response_id``, ``conversation``, stored prompts, files by id or URL, MCP
    tools): reserved at a worst case. ``max_tokens`` caps it per model (exact name or glob;
    tokens on top of the visible input); a model with no entry is reserved at its context
    window, or at ``fallback_tokens`` when that is not known."""

    max_tokens: dict[str, int] = Field(default_factory=dict)
    fallback_tokens: int = Field(200_000, ge=0)

    @field_validator("max_tokens")
    @classmethod
    def _not_negative(cls, value: dict[str, int]) -> dict[str, int]:
        return _non_negative_values(value, "a number of tokens")


class HiddenReasoningConfig(_Strict):
    """Reasoning a model does without streaming its text (OpenAI's o-series and gpt-5):
    when such a stream ends before the provider's usage arrived, the reasoning done until
    its first visible token (or its end) is billed at ``tokens_per_s`` (per model, exact
    name or glob, over the built-in paces) or, for a request on another model that asks to
    reason, ``default_tokens_per_s``. 0 turns it off for a model."""

    tokens_per_s: dict[str, float] = Field(default_factory=dict)
    default_tokens_per_s: float = Field(50.0, ge=0)

    @field_validator("tokens_per_s")
    @classmethod
    def _not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        return _non_negative_values(value, "tokens per second")


class BackgroundResponsesConfig(_Strict):
    """Responses created with ``background: true`` are billed when they end: the gateway
    polls the upstream for each, ``first_poll_s`` after it was created and then at doubling
    intervals up to ``max_poll_interval_s``; one still running after ``max_wait_s`` is
    charged at its estimate."""

    first_poll_s: float = Field(2.0, gt=0)
    max_poll_interval_s: float = Field(60.0, gt=0)
    max_wait_s: float = Field(86_400.0, gt=0)


Action = Literal["warn", "throttle", "downgrade", "block"]


class ThresholdConfig(_Strict):
    """A fraction of a budget and what happens when usage crosses it."""

    threshold: float = Field(gt=0, le=10)
    action: Action = "warn"
    channels: list[str] = Field(default_factory=list)
    reduction: float | None = Field(None, gt=0, le=1)
    fallback: Literal["cache", "downgrade", "error"] | list[str] | None = None
    downgrade_to: str | None = None


class ScheduleConfig(_Strict):
    """A different amount for certain hours or days (local to the server time zone)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    hours: str | None = None  # "09-18"
    amount: int | float = Field(ge=0)

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{1,2}-\d{1,2}", value):
            raise ValueError("expected hours as 'HH-HH', e.g. '09-18'")
        return value


class RolloverConfig(_Strict):
    """The previous window's unused amount is carried into the next, up to ``max_percent``
    of the amount (``limits/allowance.py``)."""

    max_percent: float = Field(gt=0, le=100)


CALENDAR_WINDOWS = ("minute", "hour", "day", "week", "month")


class LimitConfig(_Strict):
    """The general form of every limit: scope × window × unit × amount, plus thresholds.
    ``rollover`` and ``prorate`` (calendar windows only) change the amount window by
    window: see ``limits/allowance.py``."""

    name: str | None = None
    scope: str = "global"
    match: str | list[str] = "*"
    when: dict[str, str | list[str]] = Field(default_factory=dict)
    window: str = "day"
    unit: str = "tokens"
    amount: int | float = Field(ge=0)  # a whole number stays exact, however large
    thresholds: list[ThresholdConfig] | None = None
    failure_mode: Literal["closed", "open"] | None = None
    shadow: bool = False
    low_priority_fraction: float | None = Field(None, gt=0, le=1)
    schedule: list[ScheduleConfig] = Field(default_factory=list)
    # A model with no known price, under a USD limit: refused (the default), or counted at
    # ``fallback_price``.
    unpriced: Literal["refuse", "fallback"] = "refuse"
    fallback_price: FallbackPriceConfig | None = None
    rollover: RolloverConfig | None = None
    prorate: bool = False

    @model_validator(mode="after")
    def _calendar_only(self) -> LimitConfig:
        if (self.rollover is not None or self.prorate) and \
                self.window not in CALENDAR_WINDOWS:
            option = "rollover" if self.rollover is not None else "prorate"
            raise ValueError(f"{option} needs a calendar window ({', '.join(CALENDAR_WINDOWS)}),"
                             f" not {self.window!r}")
        return self

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        return _one_of(value, "scope", SCOPES)

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        return _one_of(value, "unit", UNITS)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value in ("request", "minute", "hour", "day", "week", "month"):
            return value
        if re.fullmatch(r"rolling:\d+[smhd]", value):
            return value
        raise ValueError(
            f"unknown window {value!r}; expected request, minute, hour, day, week, month "
            "or rolling:<n><s|m|h|d> (e.g. rolling:24h)"
        )


class OrganizationConfig(_Strict):
    name: str = "default"
    monthly_budget: int | None = Field(None, ge=0)
    daily_cap: int | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)


class ProjectConfig(_Strict):
    daily_limit: int | None = Field(None, ge=0)
    monthly_limit: int | None = Field(None, ge=0)
    request_limit: int | None = Field(None, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)
    priority: Literal["high", "normal", "low"] = "normal"
    organization: str | None = None
    enabled: bool = True


class TierConfig(_Strict):
    """Per-user limits for the users of one tier (``tier_premium`` and ``premium`` alike)."""

    daily_limit: int | None = Field(None, ge=0)
    monthly_limit: int | None = Field(None, ge=0)
    rate_limit: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)


class FeatureConfig(_Strict):
    """A feature's per-request budget: ``max_input`` and ``max_output`` tokens, its model."""

    max_input: int | None = Field(None, ge=1)
    max_output: int | None = Field(None, ge=1)
    model: str | None = None
    over_budget: Literal["reject", "trim", "summarize"] = "reject"
    daily_limit: int | None = Field(None, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)
    enabled: bool = True


class GlobalConfig(_Strict):
    tokens_per_minute: int | None = Field(None, ge=0)
    requests_per_minute: int | None = Field(None, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)


class RunsConfig(_Strict):
    """Budgets per agent run or user session: every call with the same
    ``x-tokenstile-run`` id (per key) shares one budget, forgotten ``ttl`` after its last
    call. ``budget_usd`` / ``budget_tokens``: the budget of every run (none: runs are only
    recorded, unless a run's own ``x-tokenstile-run-budget`` header sets a lower one)."""

    budget_usd: float | None = Field(None, ge=0)
    budget_tokens: int | None = Field(None, ge=0)
    ttl: str = "1h"

    @field_validator("ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        text = value.strip()
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        if not re.fullmatch(r"\d{1,9}[smhd]?", text) or not 0 < int(text.rstrip("smhd")) * \
                scale.get(text[-1], 1) <= 366 * 86400:
            raise ValueError(f"expected a duration like 90s, 30m, 1h or 2d (at most a year), "
                             f"got {value!r}")
        return text

    @property
    def ttl_s(self) -> int:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        text = self.ttl
        if text[-1] in scale:
            return int(text[:-1]) * scale[text[-1]]
        return int(text)


class CircuitBreakerConfig(_Strict):
    """An upstream that fails ``failures`` times in a row is skipped for ``cooldown_s``."""

    failures: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, gt=0)


class ResilienceConfig(_Strict):
    """Retries (backoff with jitter, honouring Retry-After) and fallbacks on upstream trouble.

    A retry happens only before any byte of the answer reached the client. Off by default:
    upstream errors pass through unchanged unless retries or fallbacks are configured. A
    request that timed out after it was sent may have been generated and billed, so it is
    charged at its estimate and tried again only with ``retry_timeouts`` (each further
    attempt reserving its own worst case).
    """

    retries: int = Field(0, ge=0, le=10)
    retry_timeouts: bool = False
    backoff_s: float = Field(0.25, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)
    retry_on: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504, 529])
    first_byte_timeout_s: float | None = Field(None, gt=0)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    circuit_breaker: CircuitBreakerConfig | None = None


class DegradationConfig(_Strict):
    """Answers with less instead of errors: cheaper models, paced traffic, trimmed input."""

    downgrade: dict[str, str] = Field(default_factory=dict)
    throttle_max_wait_s: float = Field(10.0, ge=0)
    throttle_queue: int = Field(1000, ge=0)
    summarize_model: str | None = None
    truncate: Literal["start", "middle"] = "middle"


class AlertChannelConfig(_Strict):
    """Where alerts go: a webhook (generic JSON or Slack-compatible), e-mail, or the log."""

    kind: Literal["webhook", "slack", "email", "log"] = "webhook"
    url: str | None = None
    format: Literal["json", "slack"] = "json"
    headers: dict[str, str] = Field(default_factory=dict)
    host: str | None = None
    port: int = Field(25, ge=1, le=65535)
    sender: str | None = None
    recipients: list[str] = Field(default_factory=list)
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password: str | None = None
    timeout_s: float | None = Field(None, gt=0)


class AlertingConfig(_Strict):
    """Alert delivery and the rules that watch the ledger (thresholds live on budgets)."""

    channels: dict[str, AlertChannelConfig] = Field(default_factory=dict)
    default_channels: list[str] | None = None
    interval_s: float = Field(60.0, gt=0)
    hourly_cost_usd: float | None = Field(None, gt=0)
    anomaly: bool = True
    anomaly_by: list[str] = Field(default_factory=list)
    anomaly_floor_usd: float = Field(1.0, ge=0)
    anomaly_floor_tokens: int = Field(100_000, ge=0)
    efficiency: dict[str, float] = Field(default_factory=dict)
    projection: bool = True
    daily_summary: bool = True


class CacheRuleConfig(_Strict):
    """Which requests use the cache: ``always`` (read and write), ``on_block`` (write, and
    read only when a hard budget blocks the request), or ``off``. First match wins."""

    match: dict[str, str] = Field(default_factory=dict)
    mode: Literal["always", "on_block", "off"] = "always"
    ttl_s: float | None = Field(None, gt=0)
    apis: list[str] | None = None

    @field_validator("match")
    @classmethod
    def _selectors(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = {"organization", "project", "team", "user", "tier", "key", "feature", "model"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown selector {unknown[0]!r}; expected one of "
                             f"{', '.join(sorted(allowed))}")
        return value


class CacheConfig(_Strict):
    """Exact-match response cache. A hit costs nothing and is recorded with what it saved."""

    store: str = "sqlite:///./tokenstile-cache.db"
    ttl_s: float = Field(3600.0, gt=0)
    max_entry_bytes: int = Field(1024 * 1024, ge=1024)
    retry_after_s: float = Field(5.0, gt=0)
    share: Literal["global", "organization", "project", "key"] = "organization"
    # Identical misses in flight together go upstream once; the others wait at most this
    # long for its answer (0: each goes upstream on its own).
    single_flight_wait_s: float = Field(30.0, ge=0)
    rules: list[CacheRuleConfig] = Field(
        default_factory=lambda: [CacheRuleConfig(mode="always")])


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    prices: dict[str, PriceConfig | list[PriceConfig]] = Field(default_factory=dict)
    price_adjustments: list[PriceAdjustmentConfig] = Field(default_factory=list)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    hidden_input: HiddenInputConfig = Field(default_factory=HiddenInputConfig)
    hidden_reasoning: HiddenReasoningConfig = Field(default_factory=HiddenReasoningConfig)
    background_responses: BackgroundResponsesConfig = Field(
        default_factory=BackgroundResponsesConfig)
    organization: OrganizationConfig = Field(default_factory=OrganizationConfig)
    projects: dict[str, ProjectConfig] = Field(default_factory=dict)
    users: dict[str, TierConfig] = Field(default_factory=dict)
    features: dict[str, FeatureConfig] = Field(default_factory=dict)
    limits: list[LimitConfig] = Field(default_factory=list)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    alerts: list[ThresholdConfig] = Field(default_factory=list)
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    degradation: DegradationConfig = Field(default_factory=DegradationConfig)
    cache: CacheConfig | None = None
    global_: GlobalConfig = Field(default_factory=GlobalConfig, alias="global")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _shards_hold_their_limits(self) -> Config:
        from tokenstile.stores.shards import check_config

        check_config(self)
        return self


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(replace, node)
    if isinstance(node, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), errors)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    return node


def _format_validation_error(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        parts: list[str] = []
        for item in err["loc"]:
            if isinstance(item, int):
                parts.append(f"[{item}]")
            else:
                parts.append(("." if parts else "") + str(item))
        where = "".join(parts) or "<root>"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}{shown}")
    return lines


def default_upstreams(env: Mapping[str, str]) -> dict[str, UpstreamConfig]:
    """The upstreams the SDKs themselves would use, from the same environment variables."""
    return {
        "openai": UpstreamConfig(
            kind="openai",
            base_url=env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE,
            api_key=env.get("OPENAI_API_KEY") or None,
        ),
        "anthropic": UpstreamConfig(
            kind="anthropic",
            base_url=env.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT_BASE,
            api_key=env.get("ANTHROPIC_API_KEY") or None,
        ),
    }


def parse_config(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate a loaded YAML document; raise ConfigError listing every problem with its path."""
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["<root>: expected a mapping of sections"])
    errors: list[str] = []
    data = _interpolate(data, env, "", errors)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors.extend(_format_validation_error(exc))
        raise ConfigError(source, errors) from None
    errors.extend(_semantic_errors(config))
    if errors:
        raise ConfigError(source, errors)
    if not config.upstreams:
        config = config.model_copy(update={"upstreams": default_upstreams(env)})
    return config


def _semantic_errors(config: Config) -> list[str]:
    errors = []
    for name, upstream in config.upstreams.items():
        if upstream.kind == "bedrock" and importlib.util.find_spec("botocore") is None:
            errors.append(f"upstreams.{name}.kind: bedrock needs botocore, which is not "
                          "installed: pip install 'tokenstile[bedrock]'")
    for i, route in enumerate(config.routes):
        if config.upstreams and route.upstream not in config.upstreams:
            names = ", ".join(sorted(config.upstreams)) or "none"
            errors.append(
                f"routes[{i}].upstream: unknown upstream {route.upstream!r} (configured: {names})"
            )
        elif not config.upstreams and route.upstream not in ("openai", "anthropic"):
            errors.append(
                f"routes[{i}].upstream: unknown upstream {route.upstream!r} "
                "(no upstreams configured; the defaults are openai and anthropic)"
            )
    errors.extend(_price_errors(config))
    for i, limit in enumerate(config.limits):
        if limit.unpriced == "fallback" and limit.unit != "usd":
            errors.append(f"limits[{i}].unpriced: only a USD limit prices calls; 'fallback' "
                          f"does nothing on a {limit.unit} limit")
        if limit.unpriced == "fallback" and limit.fallback_price is None:
            errors.append(f"limits[{i}].fallback_price: 'unpriced: fallback' needs a "
                          "fallback_price {input_per_mtok: .., output_per_mtok: ..}")
    for where, policy_set in config.policies.scopes():
        moderation = policy_set.auto_moderate
        if moderation is not None and moderation.upstream is not None and \
                config.upstreams and moderation.upstream not in config.upstreams:
            errors.append(f"policies.{where}auto_moderate.upstream: unknown upstream "
                          f"{moderation.upstream!r}")
    return errors


def _price_errors(config: Config) -> list[str]:
    errors = []
    for model, entry in config.prices.items():
        if not isinstance(entry, list):
            continue
        if not entry:
            errors.append(f"prices.{model}: expected at least one price")
        starts = [p.effective_from for p in entry]
        if sum(1 for s in starts if s is None) > 1:
            errors.append(f"prices.{model}: only one version may leave out effective_from "
                          "(the one in force before the others)")
        dated = [effective_ts(s) for s in starts if s is not None]
        if len(set(dated)) != len(dated):
            errors.append(f"prices.{model}: two versions take effect at the same time")
    for i, adj in enumerate(config.price_adjustments):
        if adj.effective_from is not None and adj.effective_until is not None and \
                effective_ts(adj.effective_until) <= effective_ts(adj.effective_from):
            errors.append(f"price_adjustments[{i}].effective_until: must be after "
                          "effective_from")
    return errors


def effective_ts(value: date | datetime) -> float:
    """When a price takes effect: a date is midnight UTC, a time without a zone is UTC."""
    from datetime import UTC

    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()


def referenced_channels(config: Config) -> dict[str, str]:
    """Alert channel names used anywhere, with where each is first used."""
    named: dict[str, str] = {}
    for i, threshold in enumerate(config.alerts):
        for channel in threshold.channels:
            named.setdefault(channel, f"alerts[{i}].channels")
    for i, limit in enumerate(config.limits):
        for j, threshold in enumerate(limit.thresholds or ()):
            for channel in threshold.channels:
                named.setdefault(channel, f"limits[{i}].thresholds[{j}].channels")
    for channel in config.alerting.default_channels or ():
        named.setdefault(channel, "alerting.default_channels")
    for channel in config.reconcile.channels:
        named.setdefault(channel, "reconcile.channels")
    return named


def config_warnings(config: Config) -> list[str]:
    """Things that work but are probably not what was meant (``tokenstile check`` prints
    them): e.g. an alert channel that is named but never defined goes to the log."""
    warnings = []
    for channel, where in referenced_channels(config).items():
        if channel not in config.alerting.channels:
            warnings.append(f"{where}: alert channel {channel!r} is not defined under "
                            "alerting.channels; its alerts go to the log")
    return warnings


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Load from ``path``, else ``$TOKENSTILE_CONFIG``, else the zero-config default."""
    env = os.environ if env is None else env
    chosen = path or env.get("TOKENSTILE_CONFIG")
    if not chosen:
        return parse_config({}, "<defaults>", env)
    file = Path(chosen)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(file), [f"{where}invalid YAML: {problem}"]) from None
    return parse_config(data, str(file), env)
