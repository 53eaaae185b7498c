"""What the gateway keeps to prove its numbers: reconciliation runs (the providers' reports
against the ledger) and the prices last seen for each routed model.

Chosen by the database URL like the alert history (``sqlite:///path``, ``postgresql://…``):
two tables next to the ledger, which the store also reads, aggregated in SQL (one row per
UTC day × model), to compare with the providers' daily reports.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenstile.stores.urls import backend_class

RUN_COLUMNS = ("id, ts, provider, since, until, ledger_nano, provider_nano, drift_nano, "
               "ledger_tokens, provider_tokens, drift_tokens, alerted, rows")


@dataclass(slots=True)
class DayTotals:
    """Calls and tokens of one UTC day (``day``: days since the epoch) and model, as both
    sides of a reconciliation count them (the ledger, a provider's report)."""

    day: int
    model: str
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class LedgerDay(DayTotals):
    """The ledger's totals for one UTC day and model."""

    cost_nano: int = 0


@dataclass(slots=True)
class ReconcileRun:
    """One run of ``tokenstile reconcile``: its totals and its rows (each a dict of one
    day × model: both sides' tokens and USD, and the drift)."""

    provider: str
    since: float
    until: float
    ts: float
    ledger_nano: int = 0
    provider_nano: int = 0
    ledger_tokens: int = 0
    provider_tokens: int = 0
    alerted: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    id: str = field(default_factory=lambda: "rec_" + secrets.token_hex(8))

    @property
    def drift_nano(self) -> int:
        return self.provider_nano - self.ledger_nano

    @property
    def drift_tokens(self) -> int:
        return self.provider_tokens - self.ledger_tokens

    def to_dict(self, with_rows: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "ts": self.ts, "provider": self.provider, "since": self.since,
            "until": self.until, "ledger_usd": self.ledger_nano / 1e9,
            "provider_usd": self.provider_nano / 1e9, "drift_usd": self.drift_nano / 1e9,
            "ledger_nano": self.ledger_nano, "provider_nano": self.provider_nano,
            "drift_nano": self.drift_nano, "ledger_tokens": self.ledger_tokens,
            "provider_tokens": self.provider_tokens, "drift_tokens": self.drift_tokens,
            "alerted": self.alerted}
        if with_rows:
            out["rows"] = self.rows
        return out


def run_from_row(row: Sequence[Any], rows: list[dict[str, Any]]) -> ReconcileRun:
    (id_, ts, provider, since, until, ledger_nano, provider_nano, _drift_nano, ledger_tokens,
     provider_tokens, _drift_tokens, alerted) = tuple(row)[:12]
    return ReconcileRun(provider=provider, since=since, until=until, ts=ts,
                        ledger_nano=int(ledger_nano), provider_nano=int(provider_nano),
                        ledger_tokens=int(ledger_tokens), provider_tokens=int(provider_tokens),
                        alerted=bool(alerted), rows=rows, id=id_)


@dataclass(frozen=True, slots=True)
class PriceRecord:
    """The price a routed model had when the gateway last looked (``fingerprint``: see
    ``tokenstile.price_table.fingerprint``)."""

    model: str
    provider: str
    fingerprint: str
    recorded_at: float


class RecordStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ledger_days(self, since: float, until: float,
                          upstreams: Sequence[str]) -> list[LedgerDay]:
        """The ledger between ``since`` and ``until`` for calls served by ``upstreams``,
        summed per UTC day and model in SQL (cache hits left out: no provider served them)."""
        ...

    async def save_run(self, run: ReconcileRun) -> None: ...

    async def runs(self, limit: int = 50, provider: str | None = None) -> list[ReconcileRun]:
        """Newest first."""
        ...

    async def latest_runs(self) -> list[ReconcileRun]:
        """The newest run of each provider."""
        ...

    async def prices(self) -> list[PriceRecord]: ...

    async def save_prices(self, records: Sequence[PriceRecord]) -> None:
        """Insert or replace, by (model, provider)."""
        ...


def record_store_from_url(url: str) -> RecordStore:
    store: RecordStore = backend_class("record store", url)(url)
    return store
