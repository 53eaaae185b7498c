"""What the dashboard shows, as plain data: one function per page.

The HTML pages and their JSON twins in the admin API call the same function, so a page and
its API answer cannot disagree. Every figure is read for a ``Scope``: the whole gateway or
one organization for an admin, one project for a project key.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from tokenstile.admin.dashboard_charts import money
from tokenstile.admin.keys import key_out
from tokenstile.admin.runs import run_list
from tokenstile.admin.settings import limit_view
from tokenstile.admin.usage import row_out
from tokenstile.alerts.engine import unit_value
from tokenstile.alerts.forecast import Forecast, forecast_period, month_period, straight_line
from tokenstile.alerts.recommend import CacheStats, FeatureCap, ModelUsage, TrimStats, recommend
from tokenstile.gateway.runtime import Runtime
from tokenstile.limits.model import compile_limits
from tokenstile.limits.overrides import SWITCH_SCOPES, apply_limit_overrides
from tokenstile.limits.status import BudgetStatus, budget_status
from tokenstile.limits.windows import Window, window_start
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.database import LabelUsage, UsageQuery
from tokenstile.stores.shards import status_tenants
from tokenstile.types import LedgerRow, nano_to_usd

TOTALS = ("requests", "input_tokens", "cached_input_tokens", "output_tokens",
          "reasoning_tokens", "cost_nano", "saved_nano", "blocked")
# Breakdown dimensions → ledger column (``tag`` is read through ``LabelUsage``).
DIMENSIONS: dict[str, str] = {"project": "project", "model": "served_model", "user": "user",
                              "feature": "feature", "team": "team", "tag": "tag"}
FLAG_KINDS = ("blocked", "rewritten", "degraded", "audited", "error")
ERROR_OUTCOMES = frozenset({"error", "upstream_error", "client_disconnect", "upstream_cut",
                            "unsettled"})
RANGES: dict[str, str] = {"today": "Today", "24h": "Last 24 hours", "7d": "Last 7 days",
                          "month": "This month", "30d": "Last 30 days",
                          "last_month": "Last month", "90d": "Last 90 days"}
BREAKDOWN_TOP = 6
log = logging.getLogger("tokenstile.dashboard")
RECOMMEND_DAYS = 14
HOURLY_POINTS = 48


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose numbers to show: everything (both None), an organization, or a project. A
    project key's scope also names the key (``key_id``), whose runs alone it may see."""

    organization: str | None = None
    project: str | None = None
    key_id: str | None = None

    def filters(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.organization is not None:
            out["organization"] = self.organization
        if self.project is not None:
            out["project"] = self.project
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"organization": self.organization, "project": self.project}

    def admits(self, row: LedgerRow) -> bool:
        return all(getattr(row, name) == value for name, value in self.filters().items())


@dataclass(slots=True)
class Context:
    """One dashboard request's view of the gateway: runtime, scope and the time it is."""

    rt: Runtime
    scope: Scope
    now: float = 0.0
    tz: str = "UTC"
    _memo: dict[Any, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, rt: Runtime, scope: Scope) -> Context:
        return cls(rt, scope, rt.clock.now(), rt.config.server.timezone)

    async def usage(self, since: float | None, until: float | None = None,
                    group_by: Iterable[str] = (), bucket: str | None = None,
                    limit: int = 100_000, filters: Mapping[str, str] | None = None
                    ) -> list[dict[str, Any]]:
        query = UsageQuery(since=since, until=until, group_by=list(group_by), bucket=bucket,
                           filters={**(filters or {}), **self.scope.filters()}, tz=self.tz,
                           limit=limit)
        if "tag" in query.group_by:
            db = self.rt.db
            if not isinstance(db, LabelUsage):
                return []
            query.group_by = [g for g in query.group_by if g != "tag"]
            return await db.usage_by_label(query, "tag")
        return await self.rt.db.usage(query)

    def start_of(self, kind: Literal["hour", "day", "month"], at: float | None = None
                 ) -> float:
        return window_start(Window(kind, tz=self.tz), self.now if at is None else at)


# --- figures -----------------------------------------------------------------------------------


def figures(row: Mapping[str, Any] | None) -> dict[str, Any]:
    """A usage row as the dashboard reports it: counts, tokens, exact nano-USD and USD."""
    row = row or {}
    out: dict[str, Any] = {name: int(row.get(name) or 0) for name in TOTALS}
    out["tokens"] = out["input_tokens"] + out["output_tokens"]
    out["cost_usd"] = nano_to_usd(out["cost_nano"])
    return out


def _forecast_dict(usd: Forecast, tokens: Forecast) -> dict[str, Any]:
    return {
        "cost_usd": nano_to_usd(round(usd.projected_total)),
        "cost_low_usd": nano_to_usd(round(usd.low)),
        "cost_high_usd": nano_to_usd(round(usd.high)),
        "daily_burn_usd": nano_to_usd(round(usd.daily_burn)),
        "tokens": round(tokens.projected_total), "tokens_low": round(tokens.low),
        "tokens_high": round(tokens.high), "method": usd.method,
        "days_until_exhausted": usd.days_until_exhausted,
    }


def _level(utilization: float, thresholds: list[dict[str, Any]]) -> str:
    """ok, notice (past the first threshold), warning (90 %), critical (at the hard limit)."""
    if utilization >= 1.0:
        return "critical"
    if utilization >= 0.9:
        return "warning"
    if any(utilization >= t["threshold"] for t in thresholds):
        return "notice"
    return "ok"


def budget_out(row: BudgetStatus, file_amount: int | None) -> dict[str, Any]:
    item = row.as_dict()
    item["file_amount"] = row.amount if file_amount is None else file_amount
    item["level"] = _level(row.utilization, row.thresholds)
    if row.unit == "usd":
        item["file_amount_usd"] = nano_to_usd(item["file_amount"])
    return item


async def budget_rows(ctx: Context, seen_projects: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every budget of the scope with its usage in the current window."""
    rt = ctx.rt
    scope = ctx.scope
    known: dict[str, list[str]] = {
        "organization": [scope.organization or rt.config.organization.name]}
    projects = [scope.project] if scope.project else \
        sorted({*rt.config.projects, *(p for p in seen_projects if p)})
    known["project"] = projects
    if scope.project is None:
        known["feature"] = sorted(rt.config.features)
    overridden = frozenset(o.target for o in rt.overrides.items if o.kind == "limit")
    file_amounts = {limit.name: limit.amount for limit in rt.admission.base_limits}
    rows = await budget_status(rt.admission.limits, rt.counters, ctx.now, known, overridden,
                               status_tenants(rt.config, rt.admission.shard_by))
    if scope.project is not None:
        rows = [r for r in rows if r.scope == "project" and r.scope_id == scope.project]
    return [budget_out(r, file_amounts.get(r.name)) for r in rows]


def _pick(budgets: list[dict[str, Any]], window: str, scope: Scope) -> dict[str, Any] | None:
    """The budget the seed's ``limits.daily`` / ``limits.monthly`` stand for."""
    order = ["project"] if scope.project else ["organization", "global"]
    candidates = [b for b in budgets if b["window"] == window and b["scope"] in order]
    units = ["usd", "tokens", "input_tokens", "output_tokens", "requests"]
    candidates.sort(key=lambda b: (order.index(b["scope"]), units.index(b["unit"])
                                   if b["unit"] in units else 9))
    return candidates[0] if candidates else None


def _breakdown_rows(rows: list[dict[str, Any]], column: str, top: int | None = None
                    ) -> list[dict[str, Any]]:
    total = sum(int(r.get("cost_nano") or 0) for r in rows) or 0
    out = []
    for row in rows:
        item = {"name": row.get(column), **figures(row)}
        item["share"] = round(item["cost_nano"] / total, 6) if total else 0.0
        out.append(item)
    out.sort(key=lambda i: (-i["cost_nano"], -i["tokens"], str(i["name"])))
    return out[:top] if top is not None else out


# --- overview ------------------------------------------------------------------------------------


async def overview(ctx: Context) -> dict[str, Any]:
    """The seed's dashboard: usage today, this month and projected; limits; breakdowns;
    alerts and recommendations; plus every budget and the burn rate over time."""
    today_start, month_start = ctx.start_of("day"), ctx.start_of("month")
    today = figures(next(iter(await ctx.usage(today_start)), None))
    month = figures(next(iter(await ctx.usage(month_start)), None))
    by_project = await ctx.usage(month_start, group_by=["project"])
    budgets = await _budgets_or_none(ctx, [str(r["project"]) for r in by_project
                                           if r.get("project")])
    monthly = _pick(budgets or [], "month", ctx.scope)
    usd_budget = monthly["amount"] if monthly and monthly["unit"] == "usd" else None
    tok_budget = monthly["amount"] if monthly and monthly["unit"] == "tokens" else None
    days = await month_days(ctx)
    usd = _forecast(ctx, days, "usd", usd_budget, month["cost_nano"])
    tokens = _forecast(ctx, days, "tokens", tok_budget, month["tokens"])
    projected = _forecast_dict(usd, tokens)
    if monthly is not None and monthly["unit"] == "tokens":
        projected["days_until_exhausted"] = tokens.days_until_exhausted
    daily = _pick(budgets or [], "day", ctx.scope)
    by_model = await ctx.usage(month_start, group_by=["served_model"])
    by_user = await ctx.usage(month_start, group_by=["user"])
    return {
        "scope": ctx.scope.as_dict(),
        "generated_at": ctx.now,
        "timezone": ctx.tz,
        "current_usage": {"today": {**today, "since": today_start},
                          "this_month": {**month, "since": month_start},
                          "projected_monthly": projected},
        "limits": {"daily": daily, "monthly": monthly, "utilization": {
            "daily": daily["utilization"] if daily else None,
            "monthly": monthly["utilization"] if monthly else None}},
        "budgets": budgets,
        "burn_rate": {"hourly": await hourly_burn(ctx),
                      "daily": daily_burn(ctx, days, usd, tokens)},
        "breakdown": {"by_project": _breakdown_rows(by_project, "project", 10),
                      "by_model": _breakdown_rows(by_model, "served_model", 10),
                      "by_user": _breakdown_rows(by_user, "user", 10)},
        "alerts": await alerts(ctx, budgets or [], projected, monthly),
        "recommendations": await recommendations_list(ctx),
    }


async def month_days(ctx: Context) -> list[dict[str, Any]]:
    """Usage per day of this month and the last: the query ``month_forecast`` makes, made
    once for both units and the daily chart."""
    window = Window("month", tz=ctx.tz)
    since = window_start(window, window_start(window, ctx.now) - 1)
    return await ctx.rt.db.usage(UsageQuery(since=since, until=ctx.now + 1, bucket="day",
                                            tz=ctx.tz, filters=ctx.scope.filters(),
                                            limit=1_000))


def _forecast(ctx: Context, days: list[dict[str, Any]], unit: str, budget: float | None,
              spent: float) -> Forecast:
    """What ``month_forecast`` answers, from ``month_days``; should the method fail on an
    unusual history, the straight line, so the overview still answers (and says so)."""
    period = month_period(ctx.now, ctx.tz)
    values = {date.fromisoformat(r["bucket"]): float(unit_value(r, unit)) for r in days}
    history = sorted((d, v) for d, v in values.items() if d != period.today)
    try:
        return forecast_period(history, today=period.today,
                               today_value=values.get(period.today, 0.0),
                               today_fraction=period.today_fraction,
                               period=(period.start, period.end), budget=budget)
    except (ValueError, ArithmeticError):
        log.exception("the month forecast failed; showing the straight line instead")
    elapsed = max((ctx.now - ctx.start_of("month")) / 86400, 1 / 24)
    projected = straight_line(spent, elapsed, period.days)
    return Forecast(projected, spent, max(projected, spent), None, "straight-line", spent,
                    spent / elapsed)


async def _budgets_or_none(ctx: Context, seen: list[str]) -> list[dict[str, Any]] | None:
    """Budgets, or None when the counter store cannot be read (the page says so)."""
    try:
        return await budget_rows(ctx, seen)
    except StoreUnavailable:
        return None


def local_label(ts: float, kind: str, tz: str) -> str:
    local = datetime.fromtimestamp(ts, _zone(tz))
    return local.strftime({"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d",
                           "month": "%Y-%m"}[kind])


def bucket_labels(since: float, until: float, kind: str, tz: str) -> list[str]:
    """Every bucket label from ``since`` to ``until``, empty ones included, in order."""
    labels: list[str] = []
    step = 900.0 if kind == "hour" else 3600.0  # fine enough for any zone's offsets
    t = since
    while t < until:
        label = local_label(t, kind, tz)
        if not labels or labels[-1] != label:
            labels.append(label)
        t += step
    return labels


def _series(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    by_bucket = {r["bucket"]: r for r in rows}
    return [{"bucket": label, **{k: v for k, v in figures(by_bucket.get(label)).items()
                                 if k in ("requests", "tokens", "cost_nano", "cost_usd",
                                          "blocked")}}
            for label in labels]


async def hourly_burn(ctx: Context) -> list[dict[str, Any]]:
    """Spend per hour over the last 48 hours (the current hour so far last)."""
    current = ctx.start_of("hour")
    since = current - (HOURLY_POINTS - 1) * 3600
    rows = await ctx.usage(since, bucket="hour")
    return _series(rows, bucket_labels(since, ctx.now + 1, "hour", ctx.tz))


def daily_burn(ctx: Context, days: list[dict[str, Any]], usd: Forecast, tokens: Forecast
               ) -> list[dict[str, Any]]:
    """Spend per day of this month; the days still to come carry the forecast."""
    month_start = ctx.start_of("month")
    next_month = ctx.start_of("month", month_start + 40 * 86400)
    labels = bucket_labels(month_start, next_month, "day", ctx.tz)
    series = _series(days, labels)
    today = local_label(ctx.now, "day", ctx.tz)
    position = labels.index(today) if today in labels else len(labels)
    for i, item in enumerate(series):
        item["projected_cost_usd"] = None
        item["projected_tokens"] = None
        step = i - position
        if 0 <= step < len(usd.path):
            extra_usd = usd.path[step]
            extra_tokens = tokens.path[step] if step < len(tokens.path) else 0.0
            item["projected_cost_usd"] = nano_to_usd(round(extra_usd))
            item["projected_tokens"] = round(extra_tokens)
    return series


# --- alerts -----------------------------------------------------------------------------------


async def alerts(ctx: Context, budgets: list[dict[str, Any]], projected: dict[str, Any],
                 monthly: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Active alerts (budgets past a threshold now, a month forecast over budget) first,
    then what the alert engine recorded in the last week, newest first."""
    out: list[dict[str, Any]] = []
    for b in budgets:
        crossed = [t["threshold"] for t in b["thresholds"] if b["utilization"] >= t["threshold"]]
        if not crossed and b["utilization"] < 1.0:
            continue
        severity = {"critical": "critical", "warning": "warning"}.get(b["level"], "info")
        out.append({
            "kind": "budget", "severity": severity, "active": True, "ts": ctx.now,
            "title": f"{b['name']} at {b['utilization'] * 100:.0f} %",
            "message": f"{_amount(b, 'used')} of {_amount(b, 'hard')} used "
                       f"({b['scope']} {b['scope_id']}); resets {b['resets']}",
            "data": {"limit": b["name"], "scope": b["scope"], "scope_id": b["scope_id"],
                     "utilization": b["utilization"]}})
    if monthly is not None:
        projected_amount = projected["cost_usd"] if monthly["unit"] == "usd" \
            else projected["tokens"]
        amount = monthly.get("amount_usd", monthly["amount"])
        if amount and projected_amount > amount:
            usd = monthly["unit"] == "usd"
            out.append({
                "kind": "projection", "severity": "warning", "active": True, "ts": ctx.now,
                "title": f"{monthly['name']} is forecast to run out this month",
                "message": f"projected {_in_unit(projected_amount, usd)} against "
                           f"{_in_unit(amount, usd)}",
                "data": {"limit": monthly["name"], "projected": projected_amount,
                         "amount": amount}})
    with contextlib.suppress(Exception):  # the history is a view; never fail the page on it
        for record in await ctx.rt.alerts.recent(limit=50, since=ctx.now - 7 * 86400):
            item = record.to_dict()
            if ctx.scope.project is None or _about_project(item, ctx.scope.project):
                out.append({**item, "active": False})
    return out


def _in_unit(amount: float, usd: bool) -> str:
    return money(amount) if usd else f"{round(amount):,} tokens"


def _amount(budget: Mapping[str, Any], name: str) -> str:
    if budget["unit"] == "usd":
        return money(budget[name + "_usd"])
    return f"{budget[name]:,} {budget['unit'].replace('_', ' ')}"


def _about_project(alert: Mapping[str, Any], project: str) -> bool:
    data = alert.get("data") or {}
    return (data.get("scope") == "project" and data.get("scope_id") == project) or \
        data.get("subject") == f"project:{project}" or \
        (data.get("dimension") == "project" and data.get("name") == project)


# --- recommendations --------------------------------------------------------------------------


async def recommendations_list(ctx: Context) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await recommendations(ctx))["data"]
    return found


async def recommendations(ctx: Context, days: int = RECOMMEND_DAYS) -> dict[str, Any]:
    """Advice from the last ``days`` days of usage, each with its monthly saving."""
    since = ctx.start_of("day") - (days - 1) * 86400
    daily = await ctx.usage(since, bucket="day")
    if not daily:
        return {"since": since, "days": 0.0, "data": []}
    # the days the aggregates cover: from the first day with usage (a new gateway has fewer)
    first = min(r["bucket"] for r in daily)
    first_ts = datetime.fromisoformat(first).replace(tzinfo=_zone(ctx.tz)).timestamp()
    span = min(max(1.0, (ctx.now - max(since, first_ts)) / 86400), float(days))
    models: list[ModelUsage] = [
        {"model": str(r["served_model"]), "requests": int(r["requests"]),
         "input_tokens": int(r["input_tokens"]), "output_tokens": int(r["output_tokens"]),
         "cost_nano": int(r["cost_nano"]), "days": span,
         "cached_input_tokens": int(r["cached_input_tokens"])}
        for r in await ctx.usage(since, group_by=["served_model"]) if r.get("served_model")]
    caps = {name: f.max_output for name, f in ctx.rt.config.features.items() if f.max_output}
    features: list[FeatureCap] = [
        {"feature": str(r["feature"]), "requests": int(r["requests"]),
         "output_tokens": int(r["output_tokens"]), "max_tokens": caps[str(r["feature"])]}
        for r in await ctx.usage(since, group_by=["feature"]) if r.get("feature") in caps]
    trims: list[TrimStats] = []
    db = ctx.rt.db
    if isinstance(db, LabelUsage):
        query = UsageQuery(since=since, group_by=["project"], filters=ctx.scope.filters(),
                           tz=ctx.tz)
        trimmed = {r["project"]: int(r["requests"])
                   for r in await db.usage_by_label(query, "degraded")
                   if r.get("degraded") == "trimmed"}
        for row in await ctx.usage(since, group_by=["project"]):
            if row.get("project") in trimmed:
                trims.append({"scope": f"project {row['project']}",
                              "requests": int(row["requests"]),
                              "trimmed": trimmed[row["project"]]})
    caches: list[CacheStats] = []
    found = recommend(features=features, models=models, trims=trims, caches=caches,
                      pricer=ctx.rt.pricer)
    return {"since": since, "days": round(span, 3), "data": [r.to_dict() for r in found]}


# --- breakdown ---------------------------------------------------------------------------------


def resolve_range(ctx: Context, name: str | None, since: float | None, until: float | None
                  ) -> tuple[str, float, float]:
    """A named range (or explicit bounds) → (name, since, until)."""
    if since is not None or until is not None:
        end = until if until is not None else ctx.now
        start = since if since is not None else end - 30 * 86400
        return "custom", start, end
    name = name if name in RANGES else "month"
    end = ctx.now
    if name == "today":
        return name, ctx.start_of("day"), end
    if name == "month":
        return name, ctx.start_of("month"), end
    if name == "last_month":
        this = ctx.start_of("month")
        return name, ctx.start_of("month", this - 1), this
    seconds = {"24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400}[name]
    return name, end - seconds, end


async def breakdown(ctx: Context, by: str, range_name: str | None = None,
                    since: float | None = None, until: float | None = None) -> dict[str, Any]:
    """Usage by one dimension over a range: a table and, for the largest few, a series."""
    column = DIMENSIONS[by]
    name, start, end = resolve_range(ctx, range_name, since, until)
    # a range that ends now takes in everything recorded so far, this instant's rows too
    upto = None if end >= ctx.now else end
    rows = await ctx.usage(start, upto, group_by=[column])
    table = _breakdown_rows(rows, column)
    bucket = "hour" if end - start <= 2 * 86400 else "day"
    labels = bucket_labels(start, end, bucket, ctx.tz)
    top = [item["name"] for item in table[:BREAKDOWN_TOP]]
    groups = await _series_groups(ctx, column, top, start, upto, bucket, labels)
    total = figures({t: sum(int(r.get(t) or 0) for r in rows) for t in TOTALS})
    return {"scope": ctx.scope.as_dict(), "by": by, "range": name, "since": start, "until": end,
            "timezone": ctx.tz, "total": total if by != "tag" else None, "data": table,
            "available": by != "tag" or isinstance(ctx.rt.db, LabelUsage),
            "series": {"bucket": bucket, "labels": labels, "groups": groups}}


async def _series_groups(ctx: Context, column: str, top: list[Any], start: float,
                         end: float | None, bucket: str, labels: list[str]
                         ) -> list[dict[str, Any]]:
    """Spend per bucket for each of the ``top`` values, and for the rest together.

    One query per value (each reads one value's rows from the rollup) rather than one
    grouped query: a dimension with thousands of values (users) stays cheap. Tags overlap
    (a request has several), so they get no "other" series.
    """
    def per_bucket(rows: list[dict[str, Any]]) -> dict[str, int]:
        return {r["bucket"]: int(r["cost_nano"]) for r in rows}

    def usd(values: Mapping[str, int]) -> list[float]:
        return [nano_to_usd(values.get(b, 0)) for b in labels]

    groups: list[dict[str, Any]] = []
    if column == "tag":
        rows = await ctx.usage(start, end, group_by=["tag"], bucket=bucket)
        for name in top:
            groups.append({"name": name, "cost_usd": usd(per_bucket(
                [r for r in rows if r.get("tag") == name]))})
        return groups
    shown: dict[str, int] = {}
    for name in top:
        if name is None:
            continue
        values = per_bucket(await ctx.usage(start, end, bucket=bucket,
                                            filters={column: str(name)}))
        for key, amount in values.items():
            shown[key] = shown.get(key, 0) + amount
        groups.append({"name": name, "cost_usd": usd(values)})
    total = per_bucket(await ctx.usage(start, end, bucket=bucket))
    rest = {key: amount - shown.get(key, 0) for key, amount in total.items()}
    if any(amount > 0 for amount in rest.values()):
        groups.append({"name": "other", "other": True, "cost_usd": usd(rest)})
    return groups


# --- flagged requests ----------------------------------------------------------------------


def flag_kinds(row: LedgerRow) -> list[str]:
    """What happened to a request, in the dashboard's words."""
    kinds: list[str] = []
    policies = [p for p in row.detail.get("policies", []) if isinstance(p, dict)]
    if row.outcome == "blocked" or row.block_reason:
        kinds.append("blocked")
    if any(p.get("action") == "rewrite" and not p.get("shadow") for p in policies) or \
            any(f.startswith("max_tokens_set:") for f in row.flags):
        kinds.append("rewritten")
    if row.degraded:
        kinds.append("degraded")
    noted = [f for f in row.flags if not f.startswith("max_tokens_set:")]
    rewrites = {f"{p.get('policy')}:{p.get('note')}" for p in policies
                if p.get("action") == "rewrite" and not p.get("shadow")}
    if any(f not in rewrites and not f.endswith(":blocked") for f in noted):
        kinds.append("audited")
    if row.outcome in ERROR_OUTCOMES:
        kinds.append("error")
    return kinds


def reasons(row: LedgerRow) -> list[str]:
    out = [row.block_reason] if row.block_reason else []
    out += [f for f in row.flags if f != row.block_reason]
    out += [f"degraded:{d}" for d in row.degraded]
    return out


def request_out(row: LedgerRow, tz: str) -> dict[str, Any]:
    out = row_out(row)
    out["kinds"] = flag_kinds(row)
    out["reasons"] = reasons(row)
    out["tokens"] = row.input_tokens + row.output_tokens
    out["time"] = datetime.fromtimestamp(row.ts, _zone(tz)).strftime("%Y-%m-%d %H:%M:%S")
    return out


@lru_cache(maxsize=64)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


@dataclass(frozen=True, slots=True)
class FlaggedFilter:
    kind: str | None = None
    project: str | None = None
    user: str | None = None
    feature: str | None = None
    key_id: str | None = None
    policy: str | None = None
    range: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100


async def flagged(ctx: Context, f: FlaggedFilter) -> dict[str, Any]:
    """Blocked, rewritten, degraded, audited and failed requests, newest first."""
    name, start, end = resolve_range(ctx, f.range or "30d", f.since, f.until)
    upto = None if end >= ctx.now else end
    filters: dict[str, Any] = {k: v for k, v in (("project", f.project), ("user", f.user),
                                                 ("feature", f.feature), ("key_id", f.key_id),
                                                 ("policy", f.policy)) if v}
    filters.update(ctx.scope.filters())
    if f.project and ctx.scope.project and f.project != ctx.scope.project:
        return {"scope": ctx.scope.as_dict(), "range": name, "since": start, "until": end,
                "data": []}
    fetch = min(max(f.limit * 5, 500), 20_000)
    rows = await ctx.rt.db.ledger_rows(limit=fetch, flagged=True, since=start, until=upto,
                                       **filters)
    if not f.policy:
        with contextlib.suppress(ValueError):  # a database without the filter
            seen = {r.id for r in rows}
            rows += [r for r in await ctx.rt.db.ledger_rows(
                limit=fetch, degraded=True, since=start, until=upto, **filters)
                if r.id not in seen]
    rows.sort(key=lambda r: (r.ts, r.id), reverse=True)
    items = [item for item in (request_out(r, ctx.tz) for r in rows) if item["kinds"]]
    counts = {kind: sum(kind in i["kinds"] for i in items) for kind in FLAG_KINDS}
    if f.kind is not None:
        items = [i for i in items if f.kind in i["kinds"]]
    return {"scope": ctx.scope.as_dict(), "range": name, "since": start, "until": end,
            "kind": f.kind, "counts": counts, "more": len(items) > f.limit,
            "data": items[:f.limit]}


async def request_detail(ctx: Context, request_id: str) -> dict[str, Any] | None:
    rows = await ctx.rt.db.ledger_rows(limit=1, id=request_id)
    if not rows or not ctx.scope.admits(rows[0]):
        return None
    out = request_out(rows[0], ctx.tz)
    out["bodies_logged"] = ctx.rt.config.server.log_bodies
    return out


# --- budgets, switches, keys -------------------------------------------------------------------


def _switch(rt: Runtime, scope: str, name: str, file_enabled: bool) -> dict[str, Any]:
    target = f"{scope}:{name}"
    runtime = next((o for o in rt.overrides.items
                    if o.kind == "switch" and o.target == target), None)
    return {"scope": scope, "name": name, "enabled": not rt.overrides.is_off(scope, name),
            "file_enabled": file_enabled,
            "runtime": None if runtime is None else {
                **runtime.value, "updated_at": runtime.updated_at, "author": runtime.author}}


async def budgets(ctx: Context) -> dict[str, Any]:
    """Every limit with its usage, thresholds and reset; overrides; kill switches."""
    rt = ctx.rt
    month = await ctx.usage(ctx.start_of("month"), group_by=["project"])
    rows = await _budgets_or_none(ctx, [str(r["project"]) for r in month if r.get("project")])
    base = compile_limits(rt.config)
    effective = apply_limit_overrides(base, rt.overrides.items)
    views = [limit_view(b, e) for b, e in zip(base, effective, strict=True)]
    if ctx.scope.project is not None:
        views = [v for v in views if v["scope"] == "project"
                 and (v["match"] is None or ctx.scope.project in v["match"])]
    switches = []
    projects = [ctx.scope.project] if ctx.scope.project else sorted(rt.config.projects)
    for name in projects:
        cfg = rt.config.projects.get(name)
        switches.append(_switch(rt, "project", name, cfg.enabled if cfg else True))
    if ctx.scope.project is None:
        for name, feature in sorted(rt.config.features.items()):
            switches.append(_switch(rt, "feature", name, feature.enabled))
        listed = {(s["scope"], s["name"]) for s in switches}
        for o in rt.overrides.items:
            scope, _, name = o.target.partition(":")
            if o.kind == "switch" and scope in SWITCH_SCOPES and (scope, name) not in listed:
                switches.append(_switch(rt, scope, name, True))
    overrides = [] if ctx.scope.project else [
        {"kind": o.kind, "target": o.target, "value": o.value, "updated_at": o.updated_at,
         "author": o.author} for o in rt.overrides.items]
    return {"scope": ctx.scope.as_dict(), "budgets": rows, "limits": views,
            "switches": switches, "overrides": overrides,
            "counters_available": rows is not None, "runs": await runs(ctx)}


async def runs(ctx: Context, limit: int = 50) -> list[dict[str, Any]]:
    """The latest agent runs of the last week in scope (a project key's own only)."""
    filters = ctx.scope.filters()
    if ctx.scope.key_id is not None:
        filters["key_id"] = ctx.scope.key_id
    return await run_list(ctx.rt, ctx.now - 7 * 86400, filters, limit)


async def keys(ctx: Context, state: str = "all") -> dict[str, Any]:
    filters = {"project": ctx.scope.project} if ctx.scope.project else {}
    if ctx.scope.organization:
        filters["organization"] = ctx.scope.organization
    records = await ctx.rt.db.list_keys(include_revoked=True, filters=filters)
    rows = [key_out(r, ctx.now) for r in reversed(records)]
    counts = {s: sum(r["state"] == s for r in rows) for s in ("active", "revoked", "expired")}
    if state != "all":
        rows = [r for r in rows if r["state"] == state]
    return {"scope": ctx.scope.as_dict(), "counts": counts, "data": rows,
            "projects": sorted(ctx.rt.config.projects)}
