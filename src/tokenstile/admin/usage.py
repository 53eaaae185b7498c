"""What was spent and what was stopped: usage summaries (JSON or CSV), flagged requests,
one request's ledger row, and where every budget stands now."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from typing import Any

from starlette.responses import Response

from tokenstile.admin.endpoint import Call, Endpoint
from tokenstile.admin.http import ApiError, not_found
from tokenstile.admin.schemas import (
    AlertParams,
    BudgetParams,
    FlaggedParams,
    ForecastQuery,
    UsageParams,
    as_utc,
)
from tokenstile.admin.settings import LIST
from tokenstile.alerts.engine import month_forecast
from tokenstile.config import Config
from tokenstile.limits.status import budget_status
from tokenstile.policies.flagged import flagged as listing
from tokenstile.prices import upstream_provider
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.database import UsageQuery
from tokenstile.stores.shards import status_tenants
from tokenstile.types import LedgerRow, nano_to_usd

DEFAULT_RANGE_S = 30 * 86400
_USAGE_FILTERS = ("organization", "project", "team", "user", "feature", "key_id",
                  "served_model", "outcome")


def row_out(row: LedgerRow) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    out["cost_usd"] = nano_to_usd(row.cost_nano)
    return out


def _range(call: Call, since: Any, until: Any) -> tuple[float, float | None]:
    start, end = as_utc(since), as_utc(until)
    now = call.rt.clock.now()
    return (start.timestamp() if start else now - DEFAULT_RANGE_S,
            end.timestamp() if end else None)


# ``provider`` is not a ledger column: rows are read by ``upstream`` and summed per provider.
PROVIDER = "provider"


def upstream_providers(config: Config) -> dict[str, str]:
    """Each upstream's provider: its ``provider`` setting, else the provider whose API its
    ``base_url`` is (``prices.upstream_provider``), else its ``kind``."""
    return {name: upstream_provider(u.kind, u.base_url, u.provider) or u.kind
            for name, u in config.upstreams.items()}


def ledger_groups(groups: Sequence[str]) -> list[str]:
    """The ledger columns a grouping reads (``provider`` is read as ``upstream``)."""
    return list(dict.fromkeys("upstream" if g == PROVIDER else g for g in groups))


def by_provider(rows: list[dict[str, Any]], groups: Sequence[str], bucket: str | None,
                providers: dict[str, str]) -> list[dict[str, Any]]:
    """Rows read with ``ledger_groups(groups)`` summed per provider (an upstream no longer
    configured counts as a provider of its own name; a request that reached no upstream,
    as None), ordered as usage is: by bucket, then by cost, highest first."""
    if PROVIDER not in groups:
        return rows
    keys = [*(["bucket"] if bucket else []), *groups]
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        upstream = row.get("upstream")
        values = {**row, PROVIDER: providers.get(upstream, upstream) if upstream else None}
        if "upstream" not in groups:
            values.pop("upstream", None)
        key = tuple(values.get(k) for k in keys)
        seen = merged.get(key)
        if seen is None:
            merged[key] = {**{k: values.get(k) for k in keys},
                           **{k: v for k, v in values.items() if k not in keys}}
            continue
        for name, value in values.items():
            if name not in keys and isinstance(value, int | float) and \
                    not isinstance(value, bool):
                seen[name] = (seen.get(name) or 0) + value
    items = list(merged.values())
    items.sort(key=lambda i: (str(i.get("bucket")) if bucket else "", -(i["cost_nano"] or 0)))
    return items


def usage_csv(rows: list[dict[str, Any]], group_by: Sequence[str], bucket: str | None) -> str:
    """Usage rows as CSV: the grouping columns, then the totals (USD and nano-USD)."""
    columns = [*(["bucket"] if bucket else []), *group_by, "requests", "input_tokens",
               "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost_usd",
               "cost_nano", "saved_nano", "blocked"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "cost_usd": nano_to_usd(row.get("cost_nano") or 0)})
    return out.getvalue()


async def usage(call: Call) -> Any:
    q = call.query(UsageParams)
    since, until = _range(call, q.since, q.until)
    filters = {name: value for name in _USAGE_FILTERS
               if (value := getattr(q, name)) is not None}
    query = UsageQuery(since=since, until=until, group_by=ledger_groups(q.group_by),
                       bucket=q.bucket, filters=filters, tz=call.rt.config.server.timezone,
                       limit=q.limit)
    try:
        rows = await call.rt.db.usage(query)
    except ValueError as exc:
        raise ApiError(422, str(exc), code="invalid_query") from None
    rows = by_provider(rows, q.group_by, q.bucket, upstream_providers(call.rt.config))
    for row in rows:
        row["cost_usd"] = nano_to_usd(row["cost_nano"])
    if q.format == "csv":
        return Response(usage_csv(rows, q.group_by, q.bucket),
                        media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="usage.csv"'})
    return {"since": since, "until": until, "group_by": list(q.group_by), "bucket": q.bucket,
            "data": rows}


async def flagged(call: Call) -> dict[str, Any]:
    """The same listing as ``tokenstile flagged``."""
    q = call.query(FlaggedParams)
    since, until = _range(call, q.since, q.until)
    filters = {name: getattr(q, name) for name in ("project", "user", "feature", "key_id",
                                                   "outcome", "policy")}
    items = await listing(call.rt.db, q.limit, since=since, until=until, **filters)
    return {"data": items}


async def show_request(call: Call) -> dict[str, Any]:
    request_id = call.params["request_id"]
    rows = await call.rt.db.ledger_rows(limit=1, id=request_id)
    if not rows:
        raise not_found("request", request_id)
    return row_out(rows[0])


async def budgets(call: Call) -> dict[str, Any]:
    rt = call.rt
    known: dict[str, list[str]] = {"organization": [rt.config.organization.name]}
    for pair in call.query(BudgetParams).id:
        scope, _, value = pair.partition("=")
        known.setdefault(scope, []).append(value)
    overridden = frozenset(o.target for o in rt.overrides.items if o.kind == "limit")
    file_amounts = {limit.name: limit.amount for limit in rt.admission.base_limits}
    try:
        rows = await budget_status(rt.admission.limits, rt.counters, rt.clock.now(), known,
                                   overridden, status_tenants(rt.config, rt.admission.shard_by))
    except StoreUnavailable as exc:
        raise ApiError(503, f"the counter store is unreachable ({exc})",
                       code="store_unavailable") from None
    out = []
    for row in rows:
        item = row.as_dict()
        item["file_amount"] = file_amounts.get(row.name, row.amount)
        out.append(item)
    return {"data": out}


async def alerts(call: Call) -> dict[str, Any]:
    """Alerts fired (budget thresholds, blocks, periodic rules), newest first, with their
    deliveries."""
    q = call.query(AlertParams)
    since = as_utc(q.since)
    records = await call.rt.alerts.history.recent(q.limit, since.timestamp() if since else None)
    return {"data": [record.to_dict() for record in records]}


async def forecast(call: Call) -> dict[str, Any]:
    """Where this month is heading, for the whole ledger or one slice of it."""
    q = call.query(ForecastQuery)
    filters = {name: value for name in ("organization", "project", "team", "user", "feature",
                                        "key_id") if (value := getattr(q, name)) is not None}
    rt = call.rt
    result = await month_forecast(rt.db, rt.clock.now(), rt.config.server.timezone,
                                  unit=q.unit, filters=filters)
    out: dict[str, Any] = {"unit": q.unit, **result.to_dict()}
    if q.unit == "usd":  # the series is in nano-USD
        for name in ("projected_total", "low", "high", "spent", "daily_burn"):
            out[f"{name}_usd"] = nano_to_usd(round(getattr(result, name)))
    return out


CSV_OR_JSON = {"type": "object", "properties": {"data": {"type": "array"}}}
ENDPOINTS = [
    Endpoint("GET", "/usage", usage,
             "Usage grouped by any ledger column and/or time bucket; format=csv exports",
             "usage", response=CSV_OR_JSON, query=UsageParams, csv=True),
    Endpoint("GET", "/flagged", flagged,
             "Blocked, failed, degraded and flagged requests, newest first", "usage",
             response=LIST, query=FlaggedParams),
    Endpoint("GET", "/requests/{request_id}", show_request, "One request's ledger row",
             "usage", response={"type": "object"}, errors=(404,)),
    Endpoint("GET", "/budgets", budgets,
             "Every budget: usage in the current window, amount in force and the file's, "
             "reset time", "budgets", response=LIST, query=BudgetParams, errors=(503,)),
    Endpoint("GET", "/forecast", forecast,
             "This month's projected total (with a low-high range) and daily burn",
             "usage", response={"type": "object"}, query=ForecastQuery),
    Endpoint("GET", "/alerts", alerts, "Alerts fired, newest first, with their deliveries",
             "usage", response=LIST, query=AlertParams),
]
