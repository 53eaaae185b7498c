"""The configured price table: ``prices:`` (versioned by ``effective_from``) and
``price_adjustments:`` (negotiated discounts), turned into a ``Pricer``; and the price
versions ``tokenstile prices show`` prints.

A price version applies from its ``effective_from`` (a date is midnight UTC) until the next
version of the same entry; a call is priced at the version in force when it was made, and a
ledger row keeps the cost it was written with: a price change never reprices the past.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from tokenstile.config import Config, PriceConfig, effective_ts
from tokenstile.prices import Adjustment, ModelPrice, Pricer, PriceVersions, parse_price_override

PRICE_FIELDS = ("input", "output", "cached_input", "cache_write", "reasoning", "per_request")


def _price(entry: PriceConfig) -> ModelPrice:
    return parse_price_override(entry.model_dump(exclude_none=True,
                                                 exclude={"effective_from"}))


def _start(value: date | datetime | None) -> float:
    return -math.inf if value is None else effective_ts(value)


def versions_of(entry: PriceConfig | list[PriceConfig]) -> PriceVersions:
    entries = entry if isinstance(entry, list) else [entry]
    return tuple(sorted(((_start(e.effective_from), _price(e)) for e in entries),
                        key=lambda v: v[0]))


def adjustments_of(config: Config) -> tuple[Adjustment, ...]:
    return tuple(
        Adjustment(pattern=adj.model.strip().lower(),
                   factor=(Decimal(100) - Decimal(str(adj.discount_percent))) / Decimal(100),
                   provider=adj.provider.strip().lower() if adj.provider else None,
                   start=_start(adj.effective_from),
                   end=math.inf if adj.effective_until is None
                   else effective_ts(adj.effective_until))
        for adj in config.price_adjustments)


def pricer_from_config(config: Config) -> Pricer:
    overrides = {name: versions_of(entry) for name, entry in config.prices.items()}
    return Pricer(overrides, adjustments=adjustments_of(config))


# -- what the CLI prints -----------------------------------------------------------------------

def price_summary(price: ModelPrice | None) -> dict[str, Any]:
    """The headline prices (USD per million tokens; per call for per_request)."""
    if price is None:
        return {name: None for name in PRICE_FIELDS}
    return {name: getattr(price, name) for name in PRICE_FIELDS}


def fingerprint(price: ModelPrice | None) -> str:
    """A short, stable text of a price, to tell whether it changed."""
    if price is None:
        return "unpriced"
    parts = [f"{name}={_num(getattr(price, name))}" for name in PRICE_FIELDS
             if getattr(price, name) is not None
             and not (name == "per_request" and not getattr(price, name))]
    if price.tiers:
        parts.append("tiers=" + ";".join(f"{t}:{fingerprint(p)}" for t, p in price.tiers))
    if price.service_tiers:
        parts.append("service_tiers=" + ";".join(f"{n}:{fingerprint(p)}"
                                                 for n, p in price.service_tiers))
    return " ".join(parts)


def _num(value: Decimal | None) -> str:
    if value is None:
        return "-"
    text = format(value.normalize(), "f")
    return text


@dataclass(frozen=True, slots=True)
class PriceVersion:
    start: float  # -inf: from the beginning
    source: str
    price: ModelPrice | None

    @property
    def since(self) -> str:
        if not math.isfinite(self.start):
            return "-"
        when = datetime.fromtimestamp(self.start, UTC)
        return when.date().isoformat() if when.time() == datetime.min.time() \
            else when.isoformat()


def _genai_starts(info: Any) -> list[float]:
    """The dates genai-prices' entry changes price at."""
    starts = []
    prices = getattr(info, "prices", None)
    for item in prices if isinstance(prices, list) else ():
        constraint = getattr(item, "constraint", None)
        start = getattr(constraint, "start_date", None)
        if isinstance(start, datetime):
            starts.append(start.timestamp())
        elif isinstance(start, date):
            starts.append(effective_ts(start))
    return starts


def price_versions(pricer: Pricer, model: str, provider: str | None) -> list[PriceVersion]:
    """Every price the model had, has, or is set to have: one entry per change, oldest
    first, each with where it comes from."""
    starts = sorted({-math.inf, *pricer.edges,
                     *_genai_starts(pricer.genai_info(model, provider))})
    # The first version as it stands just before the first change (or now).
    first = min(pricer_clock_now(), starts[1] - 1) if len(starts) > 1 else pricer_clock_now()
    out: list[PriceVersion] = []
    for start in starts:
        at = start if math.isfinite(start) else first
        price = pricer.price_for(model, provider, at=at)
        if out and out[-1].price == price:
            continue
        out.append(PriceVersion(start, _source(pricer, model, provider, at), price))
    return out


def _source(pricer: Pricer, model: str, provider: str | None, at: float) -> str:
    configured = pricer.override_versions(model, provider)
    in_config = any(start <= at for start, _ in configured)
    source = "config" if in_config else "genai-prices " + genai_prices_version()
    adj = pricer.adjustment_for(model, provider, at)
    if adj is not None:
        discount = (Decimal(1) - adj.factor) * 100
        source += f", {_num(discount)}% off"
    return source


def genai_prices_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genai-prices")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        return "?"


def pricer_clock_now() -> float:
    import time

    return time.time()
