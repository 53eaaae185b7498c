"""Reconciliation runs (``tokenstile reconcile``), newest first."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tokenstile.admin.endpoint import Call, Endpoint
from tokenstile.admin.http import ApiError
from tokenstile.admin.schemas import _Model
from tokenstile.admin.settings import LIST
from tokenstile.reconcile.exposure import read_runs
from tokenstile.stores.counters import StoreUnavailable


class ReconcileParams(_Model):
    provider: Literal["openai", "anthropic"] | None = None
    limit: int = Field(20, ge=1, le=500)
    rows: bool = True


async def reconcile_runs(call: Call) -> dict[str, Any]:
    """Stored reconciliation runs: totals, drift, and (with ``rows``) each day × model."""
    q = call.query(ReconcileParams)
    try:
        runs = await read_runs(call.rt.config.storage.database, limit=q.limit,
                               provider=q.provider)
    except StoreUnavailable as exc:
        raise ApiError(503, f"the database is unavailable: {exc}",
                       code="store_unavailable") from None
    return {"data": [run.to_dict(with_rows=q.rows) for run in runs]}


ENDPOINTS = [
    Endpoint("GET", "/reconcile/runs", reconcile_runs,
             "Reconciliation runs (the providers' reports against the ledger), newest first",
             "usage", response=LIST, query=ReconcileParams, errors=(503,)),
]
