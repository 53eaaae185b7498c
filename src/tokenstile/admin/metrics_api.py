"""``GET /admin/metrics/summary``: the budget article's key metrics over a window, for
admins (see ``metrics_summary`` for what each one is)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from tokenstile.admin import metrics_summary as metrics
from tokenstile.admin.dashboard_api import ScopeParams, context
from tokenstile.admin.endpoint import Call, Endpoint


class MetricsParams(ScopeParams):
    window: str = Field("24h", description="How far back from now: a number and m, h or d "
                                           "(90m, 24h, 7d), at most 400 days.",
                        examples=["24h"])
    top: int = Field(metrics.TOP, ge=1, le=100,
                     description="How many top users (and limits hit) to list.")

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        metrics.window_seconds(value)
        return value.strip()


async def metrics_summary(call: Call) -> dict[str, Any]:
    q = call.query(MetricsParams)
    return await metrics.summary(context(call, q), q.window, q.top)


ENDPOINTS = [
    Endpoint("GET", "/metrics/summary", metrics_summary,
             "Token burn rate, cost per interaction, limit hit rate, queue depth, model "
             "distribution and top users over a window (default 24h), from the ledger",
             "usage", response={"type": "object"}, query=MetricsParams),
]
