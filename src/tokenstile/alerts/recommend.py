"""Concrete advice from usage aggregates, each with the money it would save.

Pure: the caller passes plain dicts of aggregates (typically ``Database.usage`` rows over
the last N days, plus the configuration's caps) and gets back ``Recommendation`` objects
sorted by saving. Savings are monthly (30.4 days), scaled from the aggregates' ``days``.

Honesty about what saves money matters more than the size of the number:

* Lowering ``max_tokens`` does not lower the bill: providers charge for tokens generated,
  not for the cap. It frees the headroom reserved per request (so budgets admit more
  concurrent calls and a runaway answer stops sooner); its saving is stated as 0.
* Switching a model is priced with ``Pricer``: the same traffic at the cheaper model's
  prices, from the average request's usage (so long-context tiers apply as billed).
* Enabling the cache saves what the repeated requests cost, as measured.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from tokenstile.prices import Pricer
from tokenstile.types import NANO_PER_USD, Usage

DAYS_PER_MONTH = 30.4


@dataclass(frozen=True, slots=True)
class Recommendation:
    title: str
    detail: str
    saving_usd_per_month: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "detail": self.detail,
                "saving_usd_per_month": self.saving_usd_per_month, "data": self.data}


class FeatureCap(TypedDict):
    """One feature's answers against its configured output cap."""

    feature: str
    requests: int
    output_tokens: int
    max_tokens: int
    p95_output_tokens: NotRequired[int]
    """When known, the suggested cap is based on it instead of the average."""


class ModelUsage(TypedDict):
    """One model's traffic (a ``usage`` row grouped by ``served_model``)."""

    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_nano: int
    days: float
    cached_input_tokens: NotRequired[int]
    feature: NotRequired[str]


class TrimStats(TypedDict):
    """How often requests of a scope had their history trimmed to fit ``max_input``."""

    scope: str
    requests: int
    trimmed: int


class CacheStats(TypedDict):
    """Repeated requests of a scope: hits when the cache is on, identical prompts seen
    when it is off."""

    scope: str
    requests: int
    cost_nano: int
    days: float
    cache_enabled: bool
    repeats: int
    repeat_cost_nano: NotRequired[int]


DEFAULT_ALTERNATIVES: Mapping[str, str] = {
    "gpt-4": "gpt-4o-mini",
    "gpt-4-0613": "gpt-4o-mini",
    "gpt-4-turbo*": "gpt-4o-mini",
    "gpt-4o": "gpt-4o-mini",
    "gpt-4o-2*": "gpt-4o-mini",
    "gpt-4.1": "gpt-4.1-mini",
    "gpt-4.1-2*": "gpt-4.1-mini",
    "gpt-4.1-mini*": "gpt-4.1-nano",
    "gpt-5": "gpt-5-mini",
    "gpt-5-2*": "gpt-5-mini",
    "claude-*opus*": "claude-3-5-haiku-latest",
    "claude-*sonnet*": "claude-3-5-haiku-latest",
}
"""Model (exact or glob) → a cheaper model of the same provider that serves short answers."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    cap_use_below: float = 0.25
    """Recommend a lower cap when answers use less than this share of ``max_tokens``."""
    short_answer_tokens: int = 300
    """Answers averaging fewer output tokens count as short."""
    short_input_tokens: int = 4_000
    min_requests: int = 50
    min_saving_usd: float = 1.0
    trim_share: float = 0.1
    cache_repeat_share: float = 0.1


DEFAULTS = Thresholds()


def _monthly_usd(nano: float, days: float) -> float:
    if days <= 0:
        return 0.0
    return round(nano / NANO_PER_USD / days * DAYS_PER_MONTH, 2)


def lower_caps(features: Sequence[FeatureCap], t: Thresholds = DEFAULTS
               ) -> list[Recommendation]:
    """Features whose answers use a small fraction of their ``max_tokens``."""
    out = []
    for f in features:
        if f["requests"] < t.min_requests or f["max_tokens"] <= 0:
            continue
        average = f["output_tokens"] / f["requests"]
        share = average / f["max_tokens"]
        if share >= t.cap_use_below:
            continue
        basis = f.get("p95_output_tokens") or average * 2
        suggested = min(f["max_tokens"], _round_up(basis * 1.25))
        if suggested >= f["max_tokens"]:
            continue
        out.append(Recommendation(
            title=f"Lower max_tokens of feature {f['feature']!r} to about {suggested:,}",
            detail=(f"Answers average {average:,.0f} of {f['max_tokens']:,} max tokens "
                    f"({share:.0%}). A cap of {suggested:,} frees "
                    f"{f['max_tokens'] - suggested:,} tokens of budget reserved per request "
                    "and stops a runaway answer sooner. It does not lower the bill by "
                    "itself: providers charge for tokens generated, not for the cap."),
            saving_usd_per_month=0.0,
            data={"kind": "lower_cap", "feature": f["feature"], "average_output": average,
                  "max_tokens": f["max_tokens"], "suggested_max_tokens": suggested,
                  "reserved_headroom_freed": f["max_tokens"] - suggested},
        ))
    return out


def _round_up(value: float) -> int:
    """Round up to two significant figures: 137 → 140, 1234 → 1300."""
    if value <= 0:
        return 1
    magnitude = 10 ** max(0, math.floor(math.log10(value)) - 1)
    return int(math.ceil(value / magnitude) * magnitude)


def _alternative(model: str, alternatives: Mapping[str, str]) -> str | None:
    name = model.lower()
    if name in alternatives:
        return alternatives[name]
    for pattern, cheaper in sorted(alternatives.items(), key=lambda kv: -len(kv[0])):
        if fnmatch.fnmatchcase(name, pattern.lower()):
            return cheaper
    return None


def cheaper_models(models: Sequence[ModelUsage], pricer: Pricer,
                   alternatives: Mapping[str, str] = DEFAULT_ALTERNATIVES,
                   t: Thresholds = DEFAULTS) -> list[Recommendation]:
    """Models used for short answers that a cheaper model could serve, priced by ``Pricer``.

    The saving is the same requests at the cheaper model's prices (average usage per
    request × requests), against the cost the ledger recorded.
    """
    out = []
    for m in models:
        requests = m["requests"]
        if requests < t.min_requests:
            continue
        avg_out = m["output_tokens"] / requests
        avg_in = m["input_tokens"] / requests
        if avg_out > t.short_answer_tokens or avg_in > t.short_input_tokens:
            continue
        cheaper = _alternative(m["model"], alternatives)
        if cheaper is None or cheaper.lower() == m["model"].lower():
            continue
        usage = Usage(input_tokens=round(avg_in), output_tokens=round(avg_out),
                      cached_input_tokens=round(m.get("cached_input_tokens", 0) / requests))
        per_request = pricer.cost_nano(cheaper, usage)
        if per_request is None:
            continue
        alt_cost = per_request * requests
        saving = _monthly_usd(m["cost_nano"] - alt_cost, m["days"])
        if saving < t.min_saving_usd:
            continue
        where = f" for feature {m['feature']!r}" if m.get("feature") else ""
        out.append(Recommendation(
            title=f"Serve short answers{where} with {cheaper} instead of {m['model']}",
            detail=(f"{m['model']} answered {requests:,} requests{where} averaging "
                    f"{avg_in:,.0f} input and {avg_out:,.0f} output tokens. The same traffic "
                    f"at {cheaper}'s prices would cost ${alt_cost / NANO_PER_USD:,.2f} instead "
                    f"of ${m['cost_nano'] / NANO_PER_USD:,.2f} over {m['days']:g} days. Check "
                    "the answers' quality on a sample first."),
            saving_usd_per_month=saving,
            data={"kind": "cheaper_model", "model": m["model"], "alternative": cheaper,
                  "requests": requests, "average_input": avg_in, "average_output": avg_out,
                  "cost_nano": m["cost_nano"], "alternative_cost_nano": alt_cost,
                  "feature": m.get("feature")},
        ))
    return out


def frequent_trims(trims: Sequence[TrimStats], t: Thresholds = DEFAULTS
                   ) -> list[Recommendation]:
    """Scopes whose requests are trimmed often: answers may be missing context."""
    out = []
    for s in trims:
        if s["requests"] < t.min_requests:
            continue
        share = s["trimmed"] / s["requests"]
        if share < t.trim_share:
            continue
        out.append(Recommendation(
            title=f"{s['scope']}: {share:.0%} of requests are trimmed to fit max_input",
            detail=(f"{s['trimmed']:,} of {s['requests']:,} requests had older messages "
                    "dropped. Answers may miss context: summarize long histories in the "
                    "application, or raise max_input if the budget allows."),
            saving_usd_per_month=0.0,
            data={"kind": "frequent_trims", "scope": s["scope"], "trimmed": s["trimmed"],
                  "requests": s["requests"], "share": share},
        ))
    return out


def enable_cache(stats: Sequence[CacheStats], t: Thresholds = DEFAULTS
                 ) -> list[Recommendation]:
    """Scopes that repeat identical requests without the cache on."""
    out = []
    for s in stats:
        if s["cache_enabled"] or s["requests"] < t.min_requests:
            continue
        share = s["repeats"] / s["requests"]
        if share < t.cache_repeat_share:
            continue
        repeat_cost = s.get("repeat_cost_nano", s["cost_nano"] * share)
        saving = _monthly_usd(repeat_cost, s["days"])
        if saving < t.min_saving_usd:
            continue
        out.append(Recommendation(
            title=f"Enable the response cache for {s['scope']}",
            detail=(f"{share:.0%} of its {s['requests']:,} requests repeated an earlier "
                    f"identical request; serving those from the cache would have saved "
                    f"${repeat_cost / NANO_PER_USD:,.2f} over {s['days']:g} days."),
            saving_usd_per_month=saving,
            data={"kind": "enable_cache", "scope": s["scope"], "repeats": s["repeats"],
                  "requests": s["requests"], "share": share,
                  "repeat_cost_nano": repeat_cost},
        ))
    return out


def recommend(
    *,
    features: Sequence[FeatureCap] = (),
    models: Sequence[ModelUsage] = (),
    trims: Sequence[TrimStats] = (),
    caches: Sequence[CacheStats] = (),
    pricer: Pricer | None = None,
    alternatives: Mapping[str, str] = DEFAULT_ALTERNATIVES,
    thresholds: Thresholds = DEFAULTS,
) -> list[Recommendation]:
    """Every recommendation the aggregates support, largest saving first."""
    out = [*lower_caps(features, thresholds), *frequent_trims(trims, thresholds),
           *enable_cache(caches, thresholds)]
    if models:
        out += cheaper_models(models, pricer or Pricer(), alternatives, thresholds)
    return sorted(out, key=lambda r: -r.saving_usd_per_month)
