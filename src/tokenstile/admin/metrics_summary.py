"""The ratio metrics a token-budget article says to watch, computed from the ledger over a
window (``GET /admin/metrics/summary``, and the overview's "Key metrics" panel).

In the article's words:

- **token burn rate**: tokens consumed per hour and per day (the window's tokens over its
  length; the USD too);
- **cost per interaction**: average tokens per request (and USD), over the requests that
  were served, a refused one costing nothing;
- **limit hit rate**: how often limits are reached: requests refused by a budget, rate
  limit or throttle (429) over all requests, and which limits;
- **queue depth**: requests backlogged when throttling: waiting now in this process, on
  average over the window (total time waited over the window's length, Little's law),
  how many waited and how long, how many were refused for a queue too long;
- **model distribution**: which models consume most tokens, with their share;
- **top users**: the top consumers by tokens.

Every figure is exact from the ledger (the hourly rollup where it can answer) except
those read from individual rows (queue waits, which limits were hit): those read at most
``ROW_CAP`` rows and say when there were more (``complete: false``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tokenstile.admin.dashboard_data import Context, figures
from tokenstile.types import LedgerRow

WINDOW = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
SECONDS = {"m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 400 * 86400
ROW_CAP = 50_000
TOP = 10


def window_seconds(text: str) -> int:
    """``30m``, ``24h``, ``7d`` → seconds; ValueError for anything else."""
    found = WINDOW.fullmatch(text.strip())
    if found is None:
        raise ValueError("expected a number and a unit, m, h or d (e.g. 24h, 7d, 90m)")
    seconds = int(found.group(1)) * SECONDS[found.group(2)]
    if seconds > MAX_WINDOW_S:
        raise ValueError("at most 400 days")
    return seconds


def _per_request(total: int, requests: int) -> float:
    return round(total / requests, 3) if requests else 0.0


def _shares(rows: list[dict[str, Any]], column: str, top: int | None) -> list[dict[str, Any]]:
    """Rows by tokens, largest first, with each one's share of the tokens and the cost."""
    items = [{"name": row.get(column), **figures(row)} for row in rows]
    tokens = sum(item["tokens"] for item in items)
    cost = sum(item["cost_nano"] for item in items)
    for item in items:
        item["share"] = round(item["tokens"] / tokens, 6) if tokens else 0.0
        item["cost_share"] = round(item["cost_nano"] / cost, 6) if cost else 0.0
        item["tokens_per_request"] = _per_request(item["tokens"], item["requests"])
    items.sort(key=lambda i: (-i["tokens"], -i["cost_nano"], str(i["name"])))
    return items if top is None else items[:top]


def _limit_hit(row: dict[str, Any]) -> bool:
    return row.get("outcome") == "blocked" and int(row.get("status") or 0) == 429


async def _rows(ctx: Context, since: float, **filters: Any) -> tuple[list[LedgerRow], bool]:
    rows = await ctx.rt.db.ledger_rows(limit=ROW_CAP + 1, since=since,
                                       **{**filters, **ctx.scope.filters()})
    return rows[:ROW_CAP], len(rows) <= ROW_CAP


def _queue_wait_ms(row: LedgerRow) -> int:
    value = row.detail.get("queue_ms")
    return int(value) if isinstance(value, int | float) else 0


async def summary(ctx: Context, window: str = "24h", top: int = TOP) -> dict[str, Any]:
    seconds = window_seconds(window)
    since = ctx.now - seconds
    hours, days = seconds / 3600, seconds / 86400
    total = figures(next(iter(await ctx.usage(since)), None))
    served = total["requests"] - total["blocked"]

    statuses = await ctx.usage(since, group_by=["outcome", "status"])
    hits = sum(int(r["requests"]) for r in statuses if _limit_hit(r))
    hit_rows, hits_complete = await _rows(ctx, since, outcome="blocked", status=429)
    by_limit = Counter((r.block_reason or "unknown").split(",")[0] for r in hit_rows)

    degraded, queue_complete = await _rows(ctx, since, degraded=True)
    waits = [_queue_wait_ms(r) for r in degraded if "throttled" in r.degraded]
    refused = sum(int(n) for reason, n in by_limit.items() if reason.startswith("throttled:"))
    pacer = ctx.rt.degrader.pacer

    return {
        "scope": ctx.scope.as_dict(),
        "window": window,
        "window_seconds": seconds,
        "since": since,
        "until": ctx.now,
        "totals": {**total, "served": served},
        "token_burn_rate": {
            "tokens_per_hour": round(total["tokens"] / hours, 3),
            "tokens_per_day": round(total["tokens"] / days, 3),
            "usd_per_hour": round(total["cost_usd"] / hours, 9),
            "usd_per_day": round(total["cost_usd"] / days, 9),
        },
        "cost_per_interaction": {
            "tokens": _per_request(total["tokens"], served),
            "input_tokens": _per_request(total["input_tokens"], served),
            "output_tokens": _per_request(total["output_tokens"], served),
            "usd": round(total["cost_usd"] / served, 9) if served else 0.0,
            "cost_nano": round(total["cost_nano"] / served) if served else 0,
            "requests": served,
        },
        "limit_hit_rate": {
            "rate": round(hits / total["requests"], 6) if total["requests"] else 0.0,
            "limit_hits": hits,
            "requests": total["requests"],
            "by_limit": [{"limit": name, "hits": n} for name, n in by_limit.most_common(top)],
            "complete": hits_complete,
        },
        "queue_depth": {
            "current": pacer.depth,
            "average": round(sum(waits) / 1000 / seconds, 6),
            "queued_requests": len(waits),
            "average_wait_ms": round(sum(waits) / len(waits), 1) if waits else 0.0,
            "max_wait_ms": max(waits, default=0),
            "refused": refused,
            "complete": queue_complete and hits_complete,
        },
        "model_distribution": _shares(await ctx.usage(since, group_by=["served_model"]),
                                      "served_model", None),
        "top_users": _shares(await ctx.usage(since, group_by=["user"]), "user", top),
    }
