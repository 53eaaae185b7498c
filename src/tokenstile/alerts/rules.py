"""Alert rules: pure functions over plain numbers that return ``Alert`` or nothing.

No rule reads a clock, a store or the network: the caller passes ``now`` and the numbers
(usage before and after a settle, hourly buckets from the ledger, a forecast), so every
rule is tested with explicit values and can run anywhere off the hot path.

Every alert carries a ``dedupe_key`` naming the event it reports (a threshold in one
window, an anomalous bucket, one day's summary). Rules do not remember what they fired:
the engine delivers each key once, so concurrent settles that both see a threshold
crossed, or a rule evaluated twice over the same bucket, still notify once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from tokenstile.alerts.forecast import Forecast
from tokenstile.limits.explain import WINDOW_WORDS, describe_scope
from tokenstile.limits.model import Limit, Threshold
from tokenstile.limits.windows import describe_reset, window_label
from tokenstile.types import NANO_PER_USD, Unit

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")

DEFAULT_FRACTIONS: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95, 1.0)


@dataclass(frozen=True, slots=True)
class Alert:
    """One thing worth telling someone, ready for any channel."""

    kind: str
    severity: Severity
    title: str
    message: str
    dedupe_key: str
    data: dict[str, Any]
    ts: float
    channels: tuple[str, ...] = ()
    """Channel names to deliver to; empty means the engine's defaults."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["time"] = datetime.fromtimestamp(self.ts, UTC).isoformat()
        return out


# --- formatting --------------------------------------------------------------------------

def format_amount(unit: str, value: float) -> str:
    """``$12.34`` for nano-USD, ``1,234,567 tokens`` otherwise."""
    if unit == "usd":
        return f"${value / NANO_PER_USD:,.2f}"
    words = {"tokens": "tokens", "input_tokens": "input tokens",
             "output_tokens": "output tokens", "requests": "requests"}
    return f"{round(value):,} {words.get(unit, unit)}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# --- budget thresholds -------------------------------------------------------------------


def thresholds_crossed(amount: float, before: float, after: float,
                       fractions: Iterable[float] = DEFAULT_FRACTIONS) -> list[float]:
    """Fractions ``f`` with ``before < f × amount <= after``, ascending.

    A settle that moves usage down (actual below the reservation) crosses nothing.
    """
    if amount <= 0 or after <= before:
        return []
    crossed = [f for f in fractions if before < f * amount <= after]
    return sorted(set(crossed)) if crossed else crossed  # nothing, on almost every settle


def threshold_key(limit_name: str, scope_id: str, label: str, fraction: float) -> str:
    """(limit name, scope id, window label, threshold): one alert per threshold per window."""
    return f"budget:{limit_name}:{scope_id}:{label}:{fraction:g}"


def _severity_for(fraction: float, action: str) -> Severity:
    if action == "block" or fraction >= 1.0:
        return "critical"
    if action in ("throttle", "downgrade") or fraction >= 0.9:
        return "warning"
    return "info"


def budget_threshold_alerts(
    *,
    limit_name: str,
    scope: str,
    scope_id: str,
    unit: str,
    amount: float,
    window_kind: str,
    label: str,
    before: float,
    after: float,
    now: float,
    thresholds: Sequence[Threshold] = (),
    resets: str | None = None,
) -> list[Alert]:
    """Alerts for every threshold a settle moved usage across, over plain numbers.

    ``thresholds`` are the limit's own (their fractions, actions and channels); without
    any, the default 50/75/90/95/100 % warn on the engine's default channels.
    """
    by_fraction: dict[float, Threshold] = {
        t.fraction: t for t in thresholds} or {f: Threshold(f, "warn") for f in DEFAULT_FRACTIONS}
    out = []
    window = WINDOW_WORDS.get(window_kind, window_kind)
    for fraction in thresholds_crossed(amount, before, after, by_fraction):
        threshold = by_fraction[fraction]
        who = describe_scope(scope, scope_id)
        title = f"{who} has used {_pct(fraction)} of its {window} budget {limit_name!r}"
        message = (f"{who} has used {format_amount(unit, after)} of "
                   f"{format_amount(unit, amount)} ({after / amount:.1%}) in window {label}.")
        if threshold.action != "warn":
            message += f" Action at this threshold: {threshold.action}."
        if resets:
            message += f" The budget resets at {resets}."
        out.append(Alert(
            kind="budget_threshold", severity=_severity_for(fraction, threshold.action),
            title=title, message=message,
            dedupe_key=threshold_key(limit_name, scope_id, label, fraction),
            data={"limit": limit_name, "scope": scope, "scope_id": scope_id, "unit": unit,
                  "window": window_kind, "window_label": label, "threshold": fraction,
                  "action": threshold.action, "amount": amount, "used": after,
                  "used_before": before},
            ts=now, channels=threshold.channels,
        ))
    return out


def limit_threshold_alerts(limit: Limit, scope_id: str, before: float, after: float,
                           now: float) -> list[Alert]:
    """``budget_threshold_alerts`` for a compiled ``Limit`` at ``now``: its amount in force
    (schedules apply), its window label and its thresholds. Run budgets do not alert: an
    agent run stopped at its budget is the budget working, once per run."""
    if not limit.window.counted or limit.window.kind == "run" or after <= before:
        return []
    amount = limit.amount_at(now)
    fractions = [t.fraction for t in limit.thresholds] or DEFAULT_FRACTIONS
    if not thresholds_crossed(amount, before, after, fractions):
        return []  # the common case on every settle: no label or reset text to compute
    return budget_threshold_alerts(
        limit_name=limit.name, scope=limit.scope, scope_id=scope_id, unit=limit.unit,
        amount=amount, window_kind=limit.window.kind,
        label=window_label(limit.window, now), before=before, after=after, now=now,
        thresholds=limit.thresholds, resets=describe_reset(limit.window, now),
    )


def limit_blocked_alert(limit: Limit, scope_id: str, used: float, needed: float,
                        now: float) -> Alert:
    """A request refused by a hard limit: the 100 % alert of that window.

    It shares the 100 % threshold's dedupe key, so a window that fills up by settles and
    one that refuses a request before reaching 100 % both say so exactly once.
    """
    label = window_label(limit.window, now)
    amount = limit.amount_at(now)
    who = describe_scope(limit.scope, scope_id)
    window = WINDOW_WORDS.get(limit.window.kind, limit.window.kind)
    block = next((t for t in limit.thresholds if t.action == "block"), None)
    return Alert(
        kind="budget_exhausted", severity="critical",
        title=f"{who} is out of its {window} budget {limit.name!r}",
        message=(f"A request needing {format_amount(limit.unit, needed)} was refused: "
                 f"{who} has used {format_amount(limit.unit, used)} of "
                 f"{format_amount(limit.unit, amount)}. The budget resets at "
                 f"{describe_reset(limit.window, now)}."),
        dedupe_key=threshold_key(limit.name, scope_id, label, 1.0),
        data={"limit": limit.name, "scope": limit.scope, "scope_id": scope_id,
              "unit": limit.unit, "window": limit.window.kind, "window_label": label,
              "threshold": 1.0, "amount": amount, "used": used, "needed": needed},
        ts=now, channels=block.channels if block else (),
    )


# --- anomaly -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    """How unusual a bucket must be to alert.

    ``z``: robust z-score threshold. ``floor``: the bucket must also exceed this absolute
    value (tokens or nano-USD), so a quiet gateway going from 3 to 40 tokens is not news.
    ``rel_scale``: the scale is at least this fraction of the median, so a perfectly flat
    history (MAD = 0) does not turn every small wiggle into an infinite z. ``busy_q`` and
    ``busy_factor``: the bucket must exceed ``busy_factor ×`` the baseline's ``busy_q``
    quantile, so the daily return of busy hours (a business-hours rhythm puts half the
    hours near zero and the MAD with them) is not an anomaly. ``season``: buckets per
    cycle (24 hours); the bucket must also exceed ``busy_factor ×`` the largest bucket at
    the same phase of earlier cycles (the same hour on earlier days), so a nightly batch
    job is not news either. ``min_history`` / ``max_history``: buckets of baseline used
    (24-168 hourly buckets: one to seven days).
    """

    z: float = 4.0
    floor: float = 0.0
    rel_scale: float = 0.25
    busy_q: float = 0.95
    busy_factor: float = 1.2
    season: int = 24
    min_history: int = 24
    max_history: int = 168


DEFAULT_ANOMALY = AnomalySettings()


@dataclass(frozen=True, slots=True)
class AnomalyScore:
    value: float
    median: float
    scale: float
    z: float
    busy: float
    same_phase: float
    anomalous: bool


def _q(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def anomaly_score(baseline: Sequence[float], value: float,
                  settings: AnomalySettings = DEFAULT_ANOMALY) -> AnomalyScore | None:
    """Robust z-score of ``value`` against the previous buckets (oldest first).

    ``z = (value - median) / max(1.4826 × MAD, rel_scale × median, tiny)`` over the last
    ``max_history`` buckets; None when fewer than ``min_history`` are known. Median and MAD
    ignore a few past spikes that would inflate a mean and standard deviation. Anomalous
    when ``z > settings.z``, above the floor, and above both rhythm guards (see
    ``AnomalySettings``).
    """
    history = [float(v) for v in baseline[-settings.max_history:]]
    if len(history) < settings.min_history:
        return None
    med = statistics.median(history)
    mad = statistics.median(abs(v - med) for v in history)
    scale = max(1.4826 * mad, settings.rel_scale * med, 1e-9)
    z = (value - med) / scale
    busy = _q(history, settings.busy_q)
    same_phase = 0.0
    if settings.season > 0:
        same_phase = max(history[-settings.season::-settings.season], default=0.0)
    anomalous = (z > settings.z and value > settings.floor
                 and value > settings.busy_factor * busy
                 and value > settings.busy_factor * same_phase)
    return AnomalyScore(value, med, scale, z, busy, same_phase, anomalous)


def anomaly_alert(
    *,
    subject: str,
    unit: str,
    baseline: Sequence[float],
    value: float,
    bucket_label: str,
    now: float,
    settings: AnomalySettings = DEFAULT_ANOMALY,
    bucket: str = "hour",
    channels: tuple[str, ...] = (),
) -> Alert | None:
    """Spend or tokens of the last bucket far above their own baseline.

    ``subject`` names what is measured (``global``, ``project:search``); ``baseline`` holds
    the previous buckets, oldest first, with empty buckets as 0.
    """
    score = anomaly_score(baseline, value, settings)
    if score is None or not score.anomalous:
        return None
    ratio = value / score.median if score.median > 0 else math.inf
    times = f"{ratio:.1f}×" if math.isfinite(ratio) else "far above"
    return Alert(
        kind="anomaly", severity="critical" if score.z > 2 * settings.z else "warning",
        title=f"Unusual {unit_word(unit)} for {subject}: {times} the usual {bucket}",
        message=(f"{subject} used {format_amount(unit, value)} in the {bucket} {bucket_label}; "
                 f"the median {bucket} of the last {min(len(baseline), settings.max_history)} "
                 f"was {format_amount(unit, score.median)} (robust z = {score.z:.1f})."),
        dedupe_key=f"anomaly:{subject}:{unit}:{bucket_label}",
        data={"subject": subject, "unit": unit, "bucket": bucket, "bucket_label": bucket_label,
              "value": value, "median": score.median, "scale": score.scale, "z": score.z,
              "busy": score.busy, "same_phase": score.same_phase},
        ts=now, channels=channels,
    )


def unit_word(unit: str) -> str:
    return "spend" if unit == "usd" else unit.replace("_", " ")


# --- efficiency --------------------------------------------------------------------------


def efficiency_alert(
    *,
    dimension: Literal["feature", "model", "project"] | str,
    name: str,
    tokens: int,
    requests: int,
    max_average: float,
    window_label: str,
    now: float,
    min_requests: int = 20,
    channels: tuple[str, ...] = (),
) -> Alert | None:
    """Average tokens per request above ``max_average`` for a feature or model over a
    window: the signature of history concatenated without limit or a bloated prompt."""
    if requests < max(1, min_requests):
        return None
    average = tokens / requests
    if average <= max_average:
        return None
    return Alert(
        kind="efficiency", severity="warning",
        title=f"{dimension} {name!r} averages {average:,.0f} tokens per request",
        message=(f"{dimension} {name!r} used {tokens:,} tokens over {requests:,} requests in "
                 f"{window_label}: {average:,.0f} per request, above the {max_average:,.0f} "
                 "configured. Check for growing conversation history or oversized prompts."),
        dedupe_key=f"efficiency:{dimension}:{name}:{window_label}",
        data={"dimension": dimension, "name": name, "tokens": tokens, "requests": requests,
              "average": average, "max_average": max_average, "window_label": window_label},
        ts=now, channels=channels,
    )


# --- hourly cost -------------------------------------------------------------------------


def hourly_cost_alert(*, cost_nano: int, threshold_nano: int, hour_label: str, now: float,
                      subject: str = "global", channels: tuple[str, ...] = ()) -> Alert | None:
    """Spend in one hour above a fixed amount: the simplest circuit-breaker alarm."""
    if threshold_nano <= 0 or cost_nano <= threshold_nano:
        return None
    return Alert(
        kind="hourly_cost", severity="critical",
        title=f"Hourly LLM spend of {subject} exceeded {format_amount('usd', threshold_nano)}",
        message=(f"{subject} spent {format_amount('usd', cost_nano)} in the hour {hour_label}, "
                 f"above the {format_amount('usd', threshold_nano)} alert level."),
        dedupe_key=f"hourly_cost:{subject}:{hour_label}",
        data={"subject": subject, "hour_label": hour_label, "cost_nano": cost_nano,
              "threshold_nano": threshold_nano, "cost_usd": cost_nano / NANO_PER_USD},
        ts=now, channels=channels,
    )


# --- projection --------------------------------------------------------------------------


def projection_alert(
    *,
    limit_name: str,
    scope: str,
    scope_id: str,
    unit: Unit | str,
    budget: float,
    forecast: Forecast,
    label: str,
    now: float,
    channels: tuple[str, ...] = (),
) -> Alert | None:
    """The period's forecast exceeds its budget.

    Fires once per window: ``critical`` when even the low end of the interval is over
    budget, else ``warning``.
    """
    if budget <= 0 or forecast.projected_total <= budget:
        return None
    who = describe_scope(scope, scope_id)
    certain = forecast.low > budget
    days = forecast.days_until(budget)
    when = "" if days is None else (
        " It is already spent." if days == 0 else f" At this pace it runs out in {days:.1f} days.")
    return Alert(
        kind="projection", severity="critical" if certain else "warning",
        title=f"{who} is on course to exceed its budget {limit_name!r}",
        message=(f"Projected {format_amount(unit, forecast.projected_total)} "
                 f"(range {format_amount(unit, forecast.low)} to "
                 f"{format_amount(unit, forecast.high)}) against a budget of "
                 f"{format_amount(unit, budget)}; "
                 f"{format_amount(unit, forecast.spent)} used so far in {label}.{when}"),
        dedupe_key=f"projection:{limit_name}:{scope_id}:{label}",
        data={"limit": limit_name, "scope": scope, "scope_id": scope_id, "unit": unit,
              "window_label": label, "budget": budget, "days_until_exhausted": days,
              **forecast.to_dict()},
        ts=now, channels=channels,
    )


# --- daily summary -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryInput:
    """Rows as ``Database.usage`` returns them: ``requests``, ``input_tokens``,
    ``output_tokens``, ``cost_nano``, ``blocked`` … plus the grouped column."""

    totals: Mapping[str, Any]
    by_project: Sequence[Mapping[str, Any]] = ()
    by_model: Sequence[Mapping[str, Any]] = ()
    by_user: Sequence[Mapping[str, Any]] = ()
    blocks: Sequence[Mapping[str, Any]] = field(default=())
    """Optional: rows grouped by block reason or limit, each with a ``blocked`` count."""


def _top(rows: Sequence[Mapping[str, Any]], column: str, n: int) -> list[dict[str, Any]]:
    ranked = sorted(rows, key=lambda r: (-int(r.get("cost_nano") or 0),
                                         -_tokens(r), str(r.get(column))))
    return [{"name": r.get(column) or "(none)", "requests": int(r.get("requests") or 0),
             "tokens": _tokens(r), "cost_nano": int(r.get("cost_nano") or 0),
             "blocked": int(r.get("blocked") or 0)} for r in ranked[:n]]


def _tokens(row: Mapping[str, Any]) -> int:
    return int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)


def daily_summary(summary: SummaryInput, *, day_label: str, now: float, top: int = 5,
                  model_column: str = "served_model",
                  channels: tuple[str, ...] = ()) -> Alert:
    """One day's usage for stakeholders: totals, the top projects, models and users, and
    how many requests were refused."""
    t = summary.totals
    requests = int(t.get("requests") or 0)
    cost = int(t.get("cost_nano") or 0)
    tokens = _tokens(t)
    blocked = int(t.get("blocked") or 0)
    projects = _top(summary.by_project, "project", top)
    models = _top(summary.by_model, model_column, top)
    users = _top(summary.by_user, "user", top)
    lines = [f"{requests:,} requests, {tokens:,} tokens, {format_amount('usd', cost)}"
             + (f", {blocked:,} refused" if blocked else "") + "."]
    for heading, rows in (("Top projects", projects), ("Top models", models),
                          ("Top users", users)):
        if rows:
            lines.append(f"{heading}: " + "; ".join(
                f"{r['name']} {format_amount('usd', r['cost_nano'])} "
                f"({r['tokens']:,} tokens)" for r in rows))
    counted = [(str(b.get("block_reason") or b.get("limit") or b.get("name") or "(none)"),
                int(b.get("blocked") or 0)) for b in summary.blocks]
    counted = sorted((c for c in counted if c[1]), key=lambda c: -c[1])[:top]
    blocks = [{"reason": reason, "blocked": n} for reason, n in counted]
    if counted:
        lines.append("Refusals: " + "; ".join(f"{reason} {n:,}" for reason, n in counted))
    return Alert(
        kind="daily_summary", severity="info",
        title=f"LLM usage on {day_label}: {format_amount('usd', cost)}, {requests:,} requests",
        message="\n".join(lines),
        dedupe_key=f"daily_summary:{day_label}",
        data={"day": day_label, "requests": requests, "tokens": tokens,
              "input_tokens": int(t.get("input_tokens") or 0),
              "output_tokens": int(t.get("output_tokens") or 0), "cost_nano": cost,
              "blocked": blocked, "top_projects": projects, "top_models": models,
              "top_users": users, "blocks": blocks},
        ts=now, channels=channels,
    )
