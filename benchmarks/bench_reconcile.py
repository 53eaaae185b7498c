"""Reconciliation on a big ledger: a million rows in SQLite against a month of daily reports.

The ledger covers the last 30 days: 6 models (4 OpenAI, 2 served by another provider), 8
projects, with blocked requests and cache hits mixed in, loaded with ``executemany``. The
fake upstream serves OpenAI's usage and cost reports for the same 30 days (one day × model
entry each, summed from the generated rows, so the run must find zero drift but for one
seeded day). Then ``reconcile`` runs as ``tokenstile reconcile --provider openai --since 30d``
does: both reports read over HTTP (paged), the ledger summed in SQL per day × model, the
comparison, the run stored. Timed: the whole run, and the SQL aggregation alone.

    python benchmarks/bench_reconcile.py                  # 1,000,000 rows
    python benchmarks/bench_reconcile.py --rows 200000    # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tokenstile.config import parse_config  # noqa: E402
from tokenstile.reconcile.run import day_window, reconcile  # noqa: E402
from tokenstile.stores.database import LEDGER_COLUMNS  # noqa: E402
from tokenstile.stores.db_sqlite import SCHEMA, SqliteDatabase  # noqa: E402
from tokenstile.stores.records import record_store_from_url  # noqa: E402
from tokenstile.testing.fake_upstream import FakeUpstream  # noqa: E402

ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
# model: (upstream, nano-USD per input token, per output token)
MODELS = {"gpt-4o": ("openai", 2500, 10000), "gpt-4o-mini": ("openai", 150, 600),
          "gpt-4.1": ("openai", 2000, 8000), "gpt-4.1-mini": ("openai", 400, 1600),
          "claude-haiku-4-5": ("claude", 1000, 5000), "claude-sonnet-4-6": ("claude", 3000, 15000)}
PROJECTS = ["search", "support", "batch", "assistant", "reports", "ingest", "labs", "mobile"]
DAYS = 30


def ledger_tuples(count: int, now: float, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    models = list(MODELS)
    weights = [3, 10, 1, 4, 2, 3]
    span = DAYS * 86400 - 3600
    for i in range(count):
        ts = now - span * rng.random()
        model = rng.choices(models, weights)[0]
        upstream, price_in, price_out = MODELS[model]
        tokens_in = int(rng.lognormvariate(6.8, 0.9))
        tokens_out = int(rng.lognormvariate(5.2, 0.8))
        roll = rng.random()
        blocked, hit = roll < 0.03, 0.03 <= roll < 0.05
        project = rng.choice(PROJECTS)
        used_in, used_out = (0, 0) if blocked else (tokens_in, tokens_out)
        yield (
            f"bench-{i:08d}", ts, f"key_{project}", "default", project, None, "user", None,
            None, None, "chat", model, model, upstream, used_in, 0, 0, used_out, 0,
            0 if blocked or hit else used_in * price_in + used_out * price_out, 0,
            429 if blocked else 200, "blocked" if blocked else "ok", None, None,
            rng.uniform(150, 2500), None, 0, None, None, "hit" if hit else None, 0, None,
            0, 0, 0, 0, 0, None)


def load(path: Path, rows: int, now: float, fake: FakeUpstream) -> float:
    """Create and fill the ledger; seed the fake's reports with the same totals."""
    async def create() -> None:
        db = SqliteDatabase(f"sqlite:///{path}")
        await db.open()
        await db.close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    for index in ("ledger_ts", "ledger_project_ts", "ledger_outcome_ts"):
        conn.execute(f"DROP INDEX {index}")
    sql = (f"INSERT INTO ledger ({','.join(LEDGER_COLUMNS)}) "
           f"VALUES ({','.join('?' * len(LEDGER_COLUMNS))})")
    started = time.perf_counter()
    totals: dict[tuple[int, str], list[int]] = {}
    batch: list[tuple[Any, ...]] = []
    conn.execute("BEGIN")
    for row in ledger_tuples(rows, now):
        batch.append(row)
        if row[13] == "openai" and row[30] != "hit":
            sums = totals.setdefault((int(row[1] // 86400), row[12]), [0, 0, 0])
            sums[0] += row[14]
            sums[1] += row[17]
            sums[2] += row[19]
        if len(batch) == 50_000:
            conn.executemany(sql, batch)
            batch.clear()
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    conn.executescript(SCHEMA)  # the indexes again
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    for (day, model), (tokens_in, tokens_out, nano) in totals.items():
        fake.seed_drift(model, input_tokens=tokens_in, output_tokens=tokens_out,
                        usd=nano / 1e9, day=day)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="keep the database here (default: temporary)")
    args = parser.parse_args()
    fake = FakeUpstream()
    with tempfile.TemporaryDirectory() as tmp, fake.serve() as server:
        path = args.db or Path(tmp) / "bench.db"
        path.unlink(missing_ok=True)
        now = time.time()
        loaded = load(path, args.rows, now, fake)
        # One seeded drift: 2 USD of gpt-4o usage three days ago that the ledger lacks.
        drift_day = int(now // 86400) - 3
        fake.seed_drift("gpt-4o", input_tokens=100_000, output_tokens=20_000, usd=2.0,
                        day=drift_day)
        print(f"ledger: {args.rows:,} rows over {DAYS} days loaded in {loaded:.1f} s, "
              f"file {path.stat().st_size / 1e6:,.0f} MB")
        config = parse_config({
            "upstreams": {"openai": {"base_url": server.url + "/v1"},
                          "claude": {"kind": "anthropic", "base_url": server.url}},
            "storage": {"database": f"sqlite:///{path}"},
            "reconcile": {"openai": {"admin_key": ADMIN_KEY, "base_url": server.url + "/v1"},
                          "alert_above_usd": None}}, "<bench>", env={})
        since = now - (DAYS - 1) * 86400

        async def run() -> tuple[float, float, Any]:
            store = record_store_from_url(f"sqlite:///{path}")
            await store.open()
            try:
                started = time.perf_counter()
                start, end = day_window(since, now)
                days = await store.ledger_days(start, end, ["openai"])
                sql_s = time.perf_counter() - started
                assert days
                started = time.perf_counter()
                result, _ = await reconcile(config, "openai", since, now, store)
                return time.perf_counter() - started, sql_s, result
            finally:
                await store.close()

        total_s, sql_s, result = asyncio.run(run())
        drifted = [r for r in result.rows if r["drift_tokens"] or abs(r["drift_nano"]) > 10]
        print(f"reconcile --provider openai --since {DAYS}d: {total_s:.2f} s "
              f"(ledger summed per day x model in SQL: {sql_s:.2f} s); "
              f"{len(result.rows)} day x model rows, {result.ledger_tokens:,} ledger tokens")
        print("drift found: " + ", ".join(
            f"{r['day']} {r['model']} {r['drift_tokens']:+,} tokens "
            f"${r['drift_nano'] / 1e9:+,.4f}" for r in drifted))
        assert [(r["model"], r["drift_tokens"]) for r in drifted] == [("gpt-4o", 120_000)]


if __name__ == "__main__":
    main()
