"""The ``tokenstile flagged`` listing: blocked, rewritten and flagged requests with their
reasons, read back from the ledger."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from tokenstile.stores.database import Database
from tokenstile.tables import render_table
from tokenstile.types import LedgerRow

_COLUMNS = [("time", "TIME"), ("id", "REQUEST"), ("key_id", "KEY"), ("project", "PROJECT"),
            ("model", "MODEL"), ("status", "STATUS"), ("outcome", "OUTCOME"),
            ("reasons", "REASONS")]


def is_flagged(row: LedgerRow) -> bool:
    """A row with a reason: a block, a rewrite, an audit or shadow note, any flag."""
    return bool(row.block_reason or row.flags)


def as_item(row: LedgerRow) -> dict[str, Any]:
    return {
        "id": row.id, "ts": row.ts,
        "time": datetime.fromtimestamp(row.ts, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "key_id": row.key_id, "organization": row.organization, "project": row.project,
        "user": row.user, "end_user": row.end_user, "feature": row.feature,
        "model": row.requested_model, "status": row.status, "outcome": row.outcome,
        "block_reason": row.block_reason, "flags": list(row.flags),
        "policies": list(row.detail.get("policies", [])), "trace_id": row.trace_id,
    }


async def flagged(db: Database, limit: int = 100, **filters: Any) -> list[dict[str, Any]]:
    """The newest ``limit`` flagged requests matching ``filters`` (``policy``, ``key_id``,
    ``project``, ``since``, ``until``), newest first."""
    wanted = {k: v for k, v in filters.items() if v is not None}
    rows = await db.ledger_rows(limit=min(limit * 5, 50_000), flagged=True, **wanted)
    return [as_item(row) for row in rows if is_flagged(row)][:limit]


def render(items: Iterable[dict[str, Any]]) -> str:
    rows = []
    for item in items:
        reasons = ([item["block_reason"]] if item["block_reason"] else []) + [
            f for f in item["flags"] if f != item["block_reason"]]
        rows.append({**item, "reasons": ", ".join(reasons)})
    return render_table(rows, _COLUMNS, empty="(no flagged requests)")
