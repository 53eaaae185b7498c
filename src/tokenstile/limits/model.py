"""One model for every limit: scope × window × unit × amount, plus thresholds.

``compile_limits`` turns every shape a config may use (the general ``limits`` list, the
``organization`` / ``projects`` / ``users`` / ``features`` / ``global`` sections of a
``token_limits.yaml``) into one flat list of ``Limit``. Amounts are whole units: tokens,
requests, or nano-dollars for ``usd``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from zoneinfo import ZoneInfo

from tokenstile.config import Config, LimitConfig, ScheduleConfig, ThresholdConfig
from tokenstile.limits.windows import Window
from tokenstile.prices import ModelPrice
from tokenstile.types import Caller, Scope, Unit, usd_to_nano

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_LOW_PRIORITY_FRACTION = 0.8


@dataclass(frozen=True, slots=True)
class Threshold:
    fraction: float
    action: str
    channels: tuple[str, ...] = ()
    reduction: float | None = None
    fallback: tuple[str, ...] = ()
    downgrade_to: str | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    days: tuple[int, ...] | None
    hours: tuple[int, int] | None
    amount: int

    def applies(self, local: datetime) -> bool:
        if self.days is not None and local.weekday() not in self.days:
            return False
        if self.hours is not None:
            start, end = self.hours
            hour = local.hour
            inside = start <= hour < end if start <= end else (hour >= start or hour < end)
            if not inside:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    scope: Scope
    window: Window
    unit: Unit
    amount: int
    match: frozenset[str] | None = None
    when: tuple[tuple[str, frozenset[str]], ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    failure_mode: str = "closed"
    shadow: bool = False
    low_priority_fraction: float | None = None
    schedule: tuple[Schedule, ...] = ()
    origin: str = "limits"
    # ``unpriced: fallback``: a model with no known price counts at this price.
    fallback_price: ModelPrice | None = None
    # Rollover (the share of the amount a window may carry in from the previous one's
    # unused part; 0: none) and proration of the window it is first seen in.
    rollover_percent: float = 0.0
    prorate: bool = False
    # Where the limit blocks: the lowest ``block`` threshold, else the whole amount (worked
    # out once: every admission reads it for every limit).
    hard_fraction: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        blocks = [t.fraction for t in self.thresholds if t.action == "block"]
        object.__setattr__(self, "hard_fraction", min(blocks) if blocks else 1.0)

    @property
    def varies(self) -> bool:
        """Its amount changes window by window (``limits/allowance.py``)."""
        return self.rollover_percent > 0 or self.prorate

    def hard_at(self, now: float, *fractions: float) -> int:
        """Where it blocks at ``now`` (times further ``fractions``), exactly."""
        return share_of(self.amount_at(now), self.hard_fraction, *fractions)

    def amount_at(self, now: float) -> int:
        """The amount in force at ``now``: a matching schedule entry overrides it."""
        if not self.schedule:
            return self.amount
        local = datetime.fromtimestamp(now, _zone(self.window.tz))
        for entry in self.schedule:
            if entry.applies(local):
                return entry.amount
        return self.amount

    def scope_id(self, caller: Caller, attrs: dict[str, str | None]) -> str | None:
        """The id this limit counts under for a caller, or None when it does not apply."""
        value = attrs.get(self.scope)
        if value is None:
            return None
        if self.match is not None and value not in self.match:
            return None
        for attr, allowed in self.when:
            if attrs.get(attr) not in allowed:
                return None
        return value


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def parse_window(text: str, tz: str) -> Window:
    match = re.fullmatch(r"rolling:(\d+)([smhd])", text)
    if match:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return Window("rolling", tz=tz, length_s=int(match.group(1)) * scale)
    return Window(text, tz=tz)  # type: ignore[arg-type]


def tier_names(name: str) -> frozenset[str]:
    """``tier_premium`` and ``premium`` name the same tier."""
    bare = name.removeprefix("tier_")
    return frozenset({name, bare, f"tier_{bare}"})


def _amount(unit: str, value: float) -> int:
    return usd_to_nano(value) if unit == "usd" else int(value)


def share_of(amount: int, *fractions: float) -> int:
    """``amount`` times each fraction as written (0.95 is 19/20), rounded down, in exact
    arithmetic: a float product is off by more than a unit past 2^53."""
    scaled = [fraction for fraction in fractions if fraction != 1.0]
    if not scaled:
        return amount
    value = Fraction(amount)
    for fraction in scaled:
        value *= _decimal_fraction(fraction)
    return math.floor(value)


@lru_cache(maxsize=256)
def _decimal_fraction(value: float) -> Fraction:
    return Fraction(repr(value))


def _thresholds(items: Iterable[ThresholdConfig]) -> tuple[Threshold, ...]:
    out = []
    for item in items:
        fallback: tuple[str, ...] = ()
        if isinstance(item.fallback, str):
            fallback = (item.fallback,)
        elif isinstance(item.fallback, list):
            fallback = tuple(item.fallback)
        out.append(Threshold(item.threshold, item.action, tuple(item.channels), item.reduction,
                             fallback, item.downgrade_to))
    return tuple(sorted(out, key=lambda t: t.fraction))


def _schedule(items: Iterable[ScheduleConfig], unit: str) -> tuple[Schedule, ...]:
    out = []
    for item in items:
        days = tuple(_DAYS.index(d) for d in item.days) if item.days else None
        hours = None
        if item.hours:
            start, end = item.hours.split("-")
            hours = (int(start), int(end))
        out.append(Schedule(days, hours, _amount(unit, item.amount)))
    return tuple(out)


def _from_config(item: LimitConfig, index: int, tz: str, defaults: tuple[Threshold, ...]
                 ) -> Limit:
    match = None if item.match == "*" else frozenset(
        [item.match] if isinstance(item.match, str) else item.match)
    when = []
    for attr, values in sorted(item.when.items()):
        names = [values] if isinstance(values, str) else values
        allowed: set[str] = set()
        for name in names:
            allowed |= tier_names(name) if attr == "tier" else {name}
        when.append((attr, frozenset(allowed)))
    window = parse_window(item.window, tz)
    name = item.name or f"limits[{index}]"
    return Limit(
        name=name, scope=item.scope, window=window, unit=item.unit,  # type: ignore[arg-type]
        amount=_amount(item.unit, item.amount), match=match, when=tuple(when),
        thresholds=_thresholds(item.thresholds) if item.thresholds is not None else defaults,
        failure_mode=item.failure_mode or "closed", shadow=item.shadow,
        low_priority_fraction=item.low_priority_fraction,
        schedule=_schedule(item.schedule, item.unit), origin=name,
        fallback_price=_fallback(item),
        rollover_percent=item.rollover.max_percent if item.rollover else 0.0,
        prorate=item.prorate,
    )


def _fallback(item: LimitConfig) -> ModelPrice | None:
    if item.unpriced != "fallback" or item.fallback_price is None:
        return None
    return ModelPrice(input=Decimal(str(item.fallback_price.input_per_mtok)),
                      output=Decimal(str(item.fallback_price.output_per_mtok)))


@dataclass
class _Builder:
    tz: str
    defaults: tuple[Threshold, ...]
    limits: list[Limit] = field(default_factory=list)

    def add(self, name: str, scope: Scope, window: str, unit: Unit, value: float | None,
            match: str | None = None, when: tuple[tuple[str, frozenset[str]], ...] = (),
            thresholds: bool = True) -> None:
        if value is None:
            return
        self.limits.append(Limit(
            name=name, scope=scope, window=parse_window(window, self.tz), unit=unit,
            amount=_amount(unit, value), match=frozenset([match]) if match else None,
            when=when, thresholds=self.defaults if thresholds and window != "request" else (),
            origin=name,
        ))


def compile_limits(config: Config) -> list[Limit]:
    tz = config.server.timezone
    defaults = _thresholds(config.alerts)
    b = _Builder(tz, defaults)
    org = config.organization
    b.add("organization.monthly_budget", "organization", "month", "tokens", org.monthly_budget)
    b.add("organization.daily_cap", "organization", "day", "tokens", org.daily_cap)
    b.add("organization.monthly_budget_usd", "organization", "month", "usd",
          org.monthly_budget_usd)
    b.add("organization.daily_budget_usd", "organization", "day", "usd", org.daily_budget_usd)
    g = config.global_
    b.add("global.tokens_per_minute", "global", "minute", "tokens", g.tokens_per_minute,
          thresholds=False)
    b.add("global.requests_per_minute", "global", "minute", "requests", g.requests_per_minute,
          thresholds=False)
    b.add("global.daily_budget_usd", "global", "day", "usd", g.daily_budget_usd)
    b.add("global.monthly_budget_usd", "global", "month", "usd", g.monthly_budget_usd)
    for name, project in config.projects.items():
        base = f"projects.{name}"
        b.add(f"{base}.daily_limit", "project", "day", "tokens", project.daily_limit, name)
        b.add(f"{base}.monthly_limit", "project", "month", "tokens", project.monthly_limit, name)
        b.add(f"{base}.request_limit", "project", "request", "tokens", project.request_limit,
              name)
        b.add(f"{base}.daily_budget_usd", "project", "day", "usd", project.daily_budget_usd,
              name)
        b.add(f"{base}.monthly_budget_usd", "project", "month", "usd",
              project.monthly_budget_usd, name)
    for name, tier in config.users.items():
        base = f"users.{name}"
        when = (("tier", tier_names(name)),)
        b.add(f"{base}.daily_limit", "user", "day", "tokens", tier.daily_limit, when=when)
        b.add(f"{base}.monthly_limit", "user", "month", "tokens", tier.monthly_limit, when=when)
        b.add(f"{base}.rate_limit", "user", "minute", "requests", tier.rate_limit, when=when,
              thresholds=False)
        b.add(f"{base}.tokens_per_minute", "user", "minute", "tokens", tier.tokens_per_minute,
              when=when, thresholds=False)
        b.add(f"{base}.daily_budget_usd", "user", "day", "usd", tier.daily_budget_usd,
              when=when)
    for name, feature in config.features.items():
        base = f"features.{name}"
        b.add(f"{base}.max_input", "feature", "request", "input_tokens", feature.max_input, name)
        b.add(f"{base}.max_output", "feature", "request", "output_tokens", feature.max_output,
              name)
        b.add(f"{base}.daily_limit", "feature", "day", "tokens", feature.daily_limit, name)
        b.add(f"{base}.daily_budget_usd", "feature", "day", "usd", feature.daily_budget_usd,
              name)
    for index, item in enumerate(config.limits):
        b.limits.append(_from_config(item, index, tz, defaults))
    return b.limits
