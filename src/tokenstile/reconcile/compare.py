"""The comparison itself: pure functions over the two sides' daily totals.

Drift is what the provider reports minus what the ledger recorded: positive when the
provider billed more than the gateway counted (calls that went around the gateway, usage the
gateway under-counted, a price it does not know), negative when the gateway recorded more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tokenstile.alerts.rules import Alert
from tokenstile.reconcile.reports import ProviderDay, canonical_model
from tokenstile.stores.records import LedgerDay, ReconcileRun
from tokenstile.types import NANO_PER_USD, usd_to_nano

_MEASURES = ("requests", "input_tokens", "cached_input_tokens", "output_tokens")


def day_label(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).date().isoformat()


def compare(ledger: Sequence[LedgerDay], provider: Sequence[ProviderDay]) -> list[dict[str, Any]]:
    """One row per day × model on either side: both sides' requests, tokens and USD (nano),
    and the drift. A provider that reported no cost for a row has ``provider_nano`` None
    (its USD drift is then not known, and 0)."""
    mine: dict[tuple[int, str], dict[str, int]] = {}
    for d in ledger:
        sums = mine.setdefault((d.day, canonical_model(d.model)),
                               dict.fromkeys((*_MEASURES, "cost_nano"), 0))
        for name in (*_MEASURES, "cost_nano"):
            sums[name] += getattr(d, name)
    theirs = {(p.day, p.model): p for p in provider}
    rows = []
    for day, model in sorted(set(mine) | set(theirs)):
        own = mine.get((day, model), dict.fromkeys((*_MEASURES, "cost_nano"), 0))
        other = theirs.get((day, model))
        row: dict[str, Any] = {"day": day_label(day), "model": model}
        for name in _MEASURES:
            row[f"ledger_{name}"] = own[name]
            row[f"provider_{name}"] = getattr(other, name) if other else 0
        row["ledger_nano"] = own["cost_nano"]
        row["provider_nano"] = other.cost_nano if other else 0
        ledger_tokens = own["input_tokens"] + own["output_tokens"]
        provider_tokens = row["provider_input_tokens"] + row["provider_output_tokens"]
        row["ledger_tokens"], row["provider_tokens"] = ledger_tokens, provider_tokens
        row["drift_tokens"] = provider_tokens - ledger_tokens
        known = row["provider_nano"]
        row["drift_nano"] = 0 if known is None else known - own["cost_nano"]
        base = max(own["cost_nano"], known or 0)
        row["drift_percent"] = round(100.0 * row["drift_nano"] / base, 4) if base else 0.0
        row["drift_usd"] = row["drift_nano"] / NANO_PER_USD
        rows.append(row)
    return rows


def totals(run: ReconcileRun) -> None:
    """Fill the run's totals from its rows."""
    run.ledger_nano = sum(r["ledger_nano"] for r in run.rows)
    run.provider_nano = sum(r["provider_nano"] or 0 for r in run.rows)
    run.ledger_tokens = sum(r["ledger_tokens"] for r in run.rows)
    run.provider_tokens = sum(r["provider_tokens"] for r in run.rows)


def over_threshold(row: dict[str, Any], above_usd: float | None,
                   above_percent: float | None) -> bool:
    """Whether a row's drift passes every threshold that is set (none set: never)."""
    if above_usd is None and above_percent is None:
        return False
    drift = abs(int(row["drift_nano"]))
    if drift == 0:
        return False
    if above_usd is not None and drift <= usd_to_nano(above_usd):
        return False
    return not (above_percent is not None and abs(float(row["drift_percent"])) <= above_percent)


def drift_alert(run: ReconcileRun, rows: Sequence[dict[str, Any]],
                channels: Sequence[str] = ()) -> Alert | None:
    """One alert for the rows of a run whose drift passed the thresholds; the same drift
    found again by a later run is the same alert (dedupe by what drifted, not by run)."""
    if not rows:
        return None
    fingerprint = hashlib.sha256(";".join(
        f"{r['day']}|{r['model']}|{r['drift_nano']}|{r['drift_tokens']}" for r in rows
    ).encode()).hexdigest()[:16]
    total = sum(int(r["drift_nano"]) for r in rows)
    lines = [f"{r['day']} {r['model']}: provider ${(r['provider_nano'] or 0) / 1e9:,.4f} vs "
             f"ledger ${r['ledger_nano'] / 1e9:,.4f} (drift ${r['drift_nano'] / 1e9:+,.4f}, "
             f"{r['drift_percent']:+.2f}%; tokens {r['drift_tokens']:+,})" for r in rows[:20]]
    more = f"\n… and {len(rows) - 20} more" if len(rows) > 20 else ""
    return Alert(
        kind="reconcile_drift", severity="warning",
        title=f"{run.provider} reports ${total / 1e9:+,.2f} against the ledger",
        message=(f"Reconciliation {run.id} of {run.provider}'s usage and cost reports with "
                 f"the ledger found drift on {len(rows)} day(s) × model(s):\n"
                 + "\n".join(lines) + more),
        dedupe_key=f"reconcile:{run.provider}:{fingerprint}",
        data={"run": run.id, "provider": run.provider, "drift_nano": total,
              "rows": [{k: r[k] for k in ("day", "model", "drift_nano", "drift_tokens",
                                          "drift_percent")} for r in rows]},
        ts=run.ts, channels=tuple(channels))
