"""Request and response shapes of the admin API; their JSON Schemas feed the OpenAPI document."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenstile.stores.database import BUCKETS, GROUPABLE

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
ModelPattern = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
_WINDOW = re.compile(r"(minute|hour|day|week|month|rolling:\d{1,9}[smhd])")


class _Model(BaseModel):
    # Built on first use (an admin call), not when a worker starts: ~30 ms of its startup.
    model_config = ConfigDict(extra="forbid", defer_build=True)


def as_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def timestamp(value: datetime | float | None) -> float | None:
    """Unix seconds from an ISO date-time (UTC unless it says) or Unix seconds."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return value


# -- keys ------------------------------------------------------------------------------------


class KeyRollover(_Model):
    max_percent: float = Field(gt=0, le=100)


class KeyLimit(_Model):
    """A limit of the key's own, in its unit (USD for ``usd``), counted for this key alone."""

    window: str = Field(description="minute, hour, day, week, month or rolling:<n><s|m|h|d>",
                        examples=["day"])
    unit: Literal["tokens", "input_tokens", "output_tokens", "requests", "usd"] = "tokens"
    amount: float = Field(ge=0, le=1e15)
    shadow: bool = False
    rollover: KeyRollover | None = Field(
        None, description="Carry the previous window's unused amount, up to max_percent "
                          "of the amount (calendar windows).")
    prorate: bool = Field(False, description="The window the key is first used in allows "
                                             "the share of it left (calendar windows).")

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _WINDOW.fullmatch(value):
            raise ValueError("expected minute, hour, day, week, month or "
                             "rolling:<n><s|m|h|d> (e.g. rolling:24h)")
        return value

    @model_validator(mode="after")
    def _calendar_only(self) -> KeyLimit:
        if (self.rollover is not None or self.prorate) and self.window.startswith("rolling"):
            raise ValueError("rollover and prorate need a calendar window (minute, hour, "
                             "day, week or month)")
        return self


KeyLimits = dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], KeyLimit]


class KeyCreate(_Model):
    project: Name
    organization: Name | None = None
    user: Name | None = None
    team: Name | None = None
    tier: Name | None = None
    feature: Name | None = None
    name: Name | None = None
    allowed_models: list[ModelPattern] | None = Field(None, max_length=200)
    passthrough: bool = False
    expires_at: datetime | float | None = Field(
        None, description="When the key stops working: ISO 8601 with a time, or Unix seconds.")
    limits: KeyLimits = Field(default_factory=dict, max_length=32)


class KeyUpdate(_Model):
    """Fields to change; ``null`` clears ``name``, ``expires_at``, ``allowed_models``,
    ``feature`` and ``tier``."""

    name: Name | None = None
    tier: Name | None = None
    feature: Name | None = None
    allowed_models: list[ModelPattern] | None = Field(None, max_length=200)
    passthrough: bool | None = None
    expires_at: datetime | float | None = None
    limits: KeyLimits | None = Field(None, max_length=32)


class KeyListQuery(_Model):
    state: Literal["active", "revoked", "expired", "all"] = "active"
    organization: Name | None = None
    project: Name | None = None
    team: Name | None = None
    user: Name | None = None
    tier: Name | None = None
    feature: Name | None = None
    limit: int = Field(1000, ge=1, le=10_000)


class KeyOut(_Model):
    id: str
    prefix: str
    name: str | None
    organization: str
    project: str | None
    team: str | None
    user: str | None
    tier: str | None
    feature: str | None
    allowed_models: list[str] | None
    passthrough: bool
    limits: dict[str, Any]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    state: Literal["active", "revoked", "expired"]


class KeyWithSecret(KeyOut):
    key: str = Field(description="The secret: shown in this answer only, stored hashed.")


class KeyList(_Model):
    data: list[KeyOut]


# -- overrides -------------------------------------------------------------------------------


class SwitchBody(_Model):
    enabled: bool
    reason: str | None = Field(None, max_length=500)


class AmountBody(_Model):
    amount: float = Field(ge=0, le=1e15, description="In the limit's unit; USD for usd limits.")


class ShadowBody(_Model):
    shadow: bool


class OverrideOut(_Model):
    kind: Literal["switch", "limit", "shadow"]
    target: str
    value: dict[str, Any]
    updated_at: float
    author: str | None


class OverrideList(_Model):
    data: list[OverrideOut]


# -- usage -----------------------------------------------------------------------------------

GroupName = Literal[(*GROUPABLE, "provider")]  # type: ignore[valid-type]


class UsageParams(_Model):
    since: datetime | None = Field(None, description="Start (ISO 8601 or Unix seconds); "
                                                     "default 30 days ago.")
    until: datetime | None = Field(None, description="End, exclusive (default now).")
    group_by: list[GroupName] = Field(default_factory=list, max_length=6)
    bucket: Literal[BUCKETS] | None = None  # type: ignore[valid-type]
    organization: Name | None = None
    project: Name | None = None
    team: Name | None = None
    user: Name | None = None
    feature: Name | None = None
    key_id: Name | None = None
    served_model: Name | None = None
    outcome: Name | None = None
    format: Literal["json", "csv"] = "json"
    limit: int = Field(1000, ge=1, le=100_000)


class RunsParams(_Model):
    since: datetime | None = Field(None, description="Runs with a call since (ISO 8601 or "
                                                     "Unix seconds); default 7 days ago.")
    organization: Name | None = None
    project: Name | None = None
    key_id: Name | None = None
    run_id: Name | None = None
    limit: int = Field(100, ge=1, le=10_000)


class FlaggedParams(_Model):
    since: datetime | None = None
    until: datetime | None = None
    project: Name | None = None
    user: Name | None = None
    feature: Name | None = None
    key_id: Name | None = None
    outcome: Name | None = None
    policy: Name | None = Field(None, description="Block reason or flag containing this text.")
    limit: int = Field(100, ge=1, le=10_000)


class ForecastQuery(_Model):
    unit: Literal["usd", "tokens"] = "usd"
    organization: Name | None = None
    project: Name | None = None
    team: Name | None = None
    user: Name | None = None
    feature: Name | None = None
    key_id: Name | None = None


class AlertParams(_Model):
    since: datetime | None = None
    limit: int = Field(50, ge=1, le=1000)


class BudgetParams(_Model):
    id: list[Annotated[str, Field(pattern=r"^[a-z_]+=[^\x00-\x1f]{1,200}$")]] = Field(
        default_factory=list, max_length=100,
        description="Also report per-id limits for these ids, as SCOPE=ID (user=alice).")

