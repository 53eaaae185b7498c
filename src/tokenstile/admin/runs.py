"""Agent runs and user sessions (``x-tokenstile-run``, ``limits/runs.py``): what each spent,
from the ledger, and while it lives, where it stands against the run budgets, from the
counters. A project key sees the runs of its own key only: a run id is its caller's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tokenstile.admin.endpoint import Call, Endpoint
from tokenstile.admin.http import ApiError
from tokenstile.admin.schemas import RunsParams, as_utc
from tokenstile.limits.counter_keys import counter_key
from tokenstile.limits.runs import run_scope_id
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.types import Caller, nano_to_usd

if TYPE_CHECKING:
    from tokenstile.gateway.runtime import Runtime

DEFAULT_RANGE_S = 7 * 86400


async def run_list(rt: Runtime, since: float | None, filters: Mapping[str, str],
                   limit: int = 100) -> list[dict[str, Any]]:
    """Runs since ``since``, the latest first, each with its spend and, while it lives,
    its usage of every configured run budget (``budgets``; None when the counter store
    cannot be read)."""
    items = await rt.db.runs(since, filters, limit)
    now = rt.clock.now()
    runs = rt.admission.runs
    ttl = runs.window.length_s or 0
    wanted: list[tuple[dict[str, Any], str]] = []
    for item in items:
        item["cost_usd"] = nano_to_usd(item["cost_nano"])
        item["expires_at"] = item["last_ts"] + ttl
        item["live"] = item["expires_at"] > now
        item["budgets"] = []
        caller = Caller(organization=item["organization"] or "default",
                        project=item["project"], key_id=item["key_id"])
        scope_id = run_scope_id(caller, item["run_id"])
        for budget in runs.limits:
            key, _ = counter_key(budget, scope_id, now)
            wanted.append((item, key))
            item["budgets"].append({"name": budget.name, "unit": budget.unit,
                                    "amount": budget.amount, "used": 0})
    if not wanted:
        return items
    try:
        values = await rt.counters.read([key for _, key in wanted])
    except StoreUnavailable:
        for item in items:
            item["budgets"] = None
        return items
    position: dict[int, int] = {}
    for (item, _), value in zip(wanted, values, strict=True):
        index = position.get(id(item), 0)
        position[id(item)] = index + 1
        budget = item["budgets"][index]
        budget["used"] = value if item["live"] else 0
        budget["remaining"] = max(0, budget["amount"] - budget["used"])
        if budget["unit"] == "usd":
            for name in ("amount", "used", "remaining"):
                budget[f"{name}_usd"] = nano_to_usd(budget[name])
    return items


async def list_runs(call: Call) -> dict[str, Any]:
    """Agent runs with their spend, the latest first."""
    q = call.query(RunsParams)
    since = as_utc(q.since)
    start = since.timestamp() if since else call.rt.clock.now() - DEFAULT_RANGE_S
    filters = {name: value for name in ("organization", "project", "key_id", "run_id")
               if (value := getattr(q, name)) is not None}
    who = call.principal
    if who is not None and not who.is_admin:
        if q.key_id not in (None, who.key_id):
            raise ApiError(403, "a project key can only see its own runs", code="other_key")
        filters["key_id"] = who.key_id or ""
    try:
        items = await run_list(call.rt, start, filters, q.limit)
    except ValueError as exc:
        raise ApiError(422, str(exc), code="invalid_query") from None
    runs = call.rt.config.runs
    return {"since": start, "ttl_s": runs.ttl_s, "data": items}


ENDPOINTS = [
    Endpoint("GET", "/runs", list_runs,
             "Agent runs and sessions (x-tokenstile-run) with their spend and run budgets, "
             "the latest first; a project key sees its own key's runs", "usage",
             response={"type": "object", "properties": {"data": {"type": "array"}}},
             query=RunsParams, errors=(403,), readers=True),
]
