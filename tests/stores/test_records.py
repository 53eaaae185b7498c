"""The record store on SQLite and PostgreSQL alike: the ledger summed per UTC day × model in
SQL, reconciliation runs, and recorded prices."""

from __future__ import annotations

from tokenstile.stores.database import database_from_url
from tokenstile.stores.records import PriceRecord, ReconcileRun, record_store_from_url
from tokenstile.types import LedgerRow

DAY = 20_000 * 86400.0  # a midnight UTC


def _row(n: int, ts: float, model: str, upstream: str = "openai", cache: str | None = None,
         tokens: int = 10, cost: int = 1000) -> LedgerRow:
    return LedgerRow(id=f"r{n}", ts=ts, served_model=model, requested_model=model,
                     upstream=upstream, input_tokens=tokens, cached_input_tokens=1,
                     output_tokens=2 * tokens, cost_nano=cost, cache=cache)


async def test_ledger_days_runs_and_prices(db_url: str) -> None:
    db = database_from_url(db_url)
    await db.open()
    await db.insert_ledger([
        _row(1, DAY - 1, "gpt-4o"),                       # the day before
        _row(2, DAY, "gpt-4o"),                           # midnight: the new day
        _row(3, DAY + 3600, "gpt-4o", tokens=5, cost=7),
        _row(4, DAY + 7200, "gpt-4o-mini"),
        _row(5, DAY + 7200, "gpt-4o", cache="hit"),       # no provider served it
        _row(6, DAY + 7200, "claude-haiku-4-5", upstream="claude"),
        _row(7, DAY + 86400, "gpt-4o"),                   # after the window
    ])
    await db.close()
    store = record_store_from_url(db_url)
    await store.open()
    try:
        days = await store.ledger_days(DAY - 86400, DAY + 86400, ["openai"])
        got = [(d.day, d.model, d.requests, d.input_tokens, d.cached_input_tokens,
                d.output_tokens, d.cost_nano) for d in days]
        first = int(DAY // 86400)
        assert got == [(first - 1, "gpt-4o", 1, 10, 1, 20, 1000),
                       (first, "gpt-4o", 2, 15, 2, 30, 1007),
                       (first, "gpt-4o-mini", 1, 10, 1, 20, 1000)]
        assert await store.ledger_days(DAY, DAY + 86400, []) == []

        runs = [ReconcileRun("openai", DAY, DAY + 86400, ts=DAY + 10, ledger_nano=5,
                             provider_nano=8, ledger_tokens=3, provider_tokens=1,
                             alerted=True, rows=[{"day": "x", "drift_nano": 3}]),
                ReconcileRun("openai", DAY, DAY + 86400, ts=DAY + 20),
                ReconcileRun("anthropic", DAY, DAY + 86400, ts=DAY + 5)]
        for run in runs:
            await store.save_run(run)
        listed = await store.runs()
        assert [r.id for r in listed] == [runs[1].id, runs[0].id, runs[2].id]
        back = next(r for r in listed if r.id == runs[0].id)
        assert (back.drift_nano, back.drift_tokens, back.alerted, back.rows) == \
            (3, -2, True, [{"day": "x", "drift_nano": 3}])
        assert [r.id for r in await store.runs(provider="anthropic")] == [runs[2].id]
        latest = await store.latest_runs()
        assert sorted(r.id for r in latest) == sorted([runs[1].id, runs[2].id])

        await store.save_prices([PriceRecord("gpt-4o", "openai", "input=2.5", 1.0),
                                 PriceRecord("gpt-4o", "", "input=2", 1.0)])
        await store.save_prices([PriceRecord("gpt-4o", "openai", "input=3", 2.0)])
        assert await store.prices() == [PriceRecord("gpt-4o", "", "input=2", 1.0),
                                        PriceRecord("gpt-4o", "openai", "input=3", 2.0)]
    finally:
        await store.close()
