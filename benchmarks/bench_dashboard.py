"""The dashboard on a realistic ledger: a million rows in SQLite, then every page timed.

The ledger covers the last 60 days (this month and the one before, which the forecast
reads): 8 projects, 6 models, 300 users, 12 features, two tags per row, a weekday rhythm,
3 % blocked and 3 % degraded requests. Rows are loaded with ``executemany`` with the
ledger's indexes dropped, then the indexes and the hourly rollup are rebuilt (a live
gateway keeps the rollup batch by batch as it writes the ledger). A gateway is started on
the file, logs in through the login form, and each page and JSON twin is fetched over
HTTP: the first (cold) time, then the median of ``--repeat`` more.

``--ledger-only`` also times the same overview with the rollup ignored (every figure read
from the ledger itself), to show what the rollup buys.

    python benchmarks/bench_dashboard.py                  # 1,000,000 rows, ~1 minute
    python benchmarks/bench_dashboard.py --rows 200000    # quicker
    python benchmarks/bench_dashboard.py --timezone Asia/Kolkata
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tokenstile.app import TokenstileApp  # noqa: E402
from tokenstile.config import parse_config  # noqa: E402
from tokenstile.gateway.runtime import Runtime  # noqa: E402
from tokenstile.stores import usage_sqlite  # noqa: E402
from tokenstile.stores.database import LEDGER_COLUMNS  # noqa: E402
from tokenstile.stores.db_sqlite import SCHEMA, SqliteDatabase  # noqa: E402
from tokenstile.stores.usage_plan import UsagePlan  # noqa: E402
from tokenstile.testing.server_thread import RunningServer  # noqa: E402

ADMIN_KEY = "adm-bench-0123456789abcdef0123456789"
PROJECTS = ["search", "support", "batch", "assistant", "reports", "ingest", "labs", "mobile"]
MODELS = {"gpt-4o": (2500, 10000), "gpt-4o-mini": (150, 600), "gpt-4.1": (2000, 8000),
          "gpt-4.1-mini": (400, 1600), "claude-3-5-haiku-latest": (800, 4000),
          "text-embedding-3-small": (20, 0)}
FEATURES = [f"feature-{i}" for i in range(12)]
USERS = [f"user-{i:03d}" for i in range(300)]
PAGES = ["/dashboard/", "/api/dashboard", "/dashboard/breakdown?by=user",
         "/dashboard/breakdown?by=tag&range=30d", "/dashboard/flagged", "/dashboard/budgets",
         "/dashboard/keys", "/dashboard/recommendations"]


def ledger_tuples(count: int, now: float, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """``count`` ledger rows as ``LEDGER_COLUMNS`` tuples, newest 60 days, weekday rhythm."""
    rng = random.Random(seed)
    models = list(MODELS)
    model_weights = [3, 10, 1, 4, 2, 3]
    project_weights = [8, 5, 3, 6, 1, 2, 1, 2]
    span = 60 * 86400
    # Most of a user's requests go to one project, the rest anywhere.
    home = {user: rng.choices(PROJECTS, project_weights)[0] for user in USERS}
    for i in range(count):
        ts = now - span * rng.random() ** 0.9
        if time.gmtime(ts).tm_wday >= 5 and rng.random() < 0.6:
            ts -= 2 * 86400
        model = rng.choices(models, model_weights)[0]
        price_in, price_out = MODELS[model]
        tokens_in = int(rng.lognormvariate(6.8, 0.9))
        tokens_out = 0 if price_out == 0 else int(rng.lognormvariate(5.2, 0.8))
        roll = rng.random()
        blocked = roll < 0.03
        degraded = '["trimmed"]' if 0.03 <= roll < 0.06 else None
        flags = '["request_wordlists:audit:profanity"]' if 0.06 <= roll < 0.07 else None
        user = rng.choice(USERS)
        project = home[user] if rng.random() < 0.8 else rng.choices(PROJECTS,
                                                                     project_weights)[0]
        yield (
            f"bench-{i:08d}", ts, f"key_{project}", "default", project,
            "team-" + project[:2], user, None, rng.choice(FEATURES),
            f'{{"env":"{"prod" if roll < 0.8 else "staging"}","team":"{project[:2]}"}}',
            "chat", model, model, "openai", 0 if blocked else tokens_in, 0, 0,
            0 if blocked else tokens_out, 0,
            0 if blocked else tokens_in * price_in + tokens_out * price_out, 0,
            429 if blocked else 200, "blocked" if blocked else "ok",
            "budget:projects.search.daily_budget_usd" if blocked else None, flags,
            rng.uniform(150, 2500), None, 0, None, degraded, None, 0, None)


def load(path: Path, rows: int, now: float) -> tuple[float, float]:
    """Create the database and load ``rows``; return (load seconds, rollup seconds)."""
    async def create() -> None:
        db = SqliteDatabase(f"sqlite:///{path}")
        await db.open()
        await db.close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")  # a scratch file: no crash safety needed
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    conn.execute("PRAGMA temp_store=MEMORY")
    for index in ("ledger_ts", "ledger_project_ts", "ledger_outcome_ts"):
        conn.execute(f"DROP INDEX {index}")  # built once after the load: much faster
    sql = (f"INSERT INTO ledger ({','.join(LEDGER_COLUMNS)}) "
           f"VALUES ({','.join('?' * len(LEDGER_COLUMNS))})")
    started = time.perf_counter()
    batch: list[tuple[Any, ...]] = []
    conn.execute("BEGIN")
    for row in ledger_tuples(rows, now):
        batch.append(row)
        if len(batch) == 50_000:
            conn.executemany(sql, batch)
            batch.clear()
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    conn.executescript(SCHEMA)
    usage_sqlite.rebuild_rollup(conn)
    rolled = time.perf_counter() - started
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return loaded, rolled


def config(path: Path, tz: str = "UTC") -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN_KEY, "timezone": tz},
        "storage": {"counters": "memory://", "database": f"sqlite:///{path}"},
        "organization": {"daily_budget_usd": 500, "monthly_budget_usd": 12_000},
        "projects": {name: {"daily_budget_usd": 100} for name in PROJECTS},
        "features": {name: {"max_output": 4000} for name in FEATURES[:4]},
    }


def login(base: str) -> requests.Session:
    session = requests.Session()
    form = session.get(f"{base}/dashboard/login", timeout=30).text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    answer = session.post(f"{base}/dashboard/login", timeout=30, allow_redirects=False,
                          data={"key": ADMIN_KEY, "csrf": token.group(1)})
    assert answer.status_code == 303, answer.text
    session.headers["authorization"] = f"Bearer {ADMIN_KEY}"
    return session


def timed(session: requests.Session, url: str, repeat: int) -> tuple[float, float]:
    """(first, median of the next ``repeat``) seconds for GET ``url``."""
    times = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        answer = session.get(url, timeout=120)
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", type=Path, help="keep the database here (default: temporary)")
    parser.add_argument("--timezone", default="UTC",
                        help="server.timezone (Asia/Kolkata: days that start off the hour)")
    parser.add_argument("--ledger-only", action="store_true",
                        help="also time the overview with the rollup ignored")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.db"
        path.unlink(missing_ok=True)
        now = time.time()
        loaded, rolled = load(path, args.rows, now)
        size = path.stat().st_size / 1e6
        print(f"ledger: {args.rows:,} rows loaded in {loaded:.1f} s, indexes and rollup "
              f"built in {rolled:.1f} s, file {size:,.0f} MB")
        runtime = Runtime.build(parse_config(config(path, args.timezone), "<bench>", env={}))
        server = RunningServer(TokenstileApp(runtime))
        base = server.start()
        try:
            session = login(base)
            print(f"{'page':44} {'first':>9} {'median':>9}")
            for page in PAGES:
                first, median = timed(session, base + page, args.repeat)
                print(f"{page:44} {first * 1000:8.0f}ms {median * 1000:8.0f}ms")
            if args.ledger_only:
                original = usage_sqlite.plan_usage
                usage_sqlite.plan_usage = lambda query, label=None, span=None: UsagePlan(
                    None, ledger=((query.since, query.until),))
                try:
                    first, median = timed(session, base + "/dashboard/", 1)
                    print(f"{'/dashboard/ without the rollup':44} {first * 1000:8.0f}ms "
                          f"{median * 1000:8.0f}ms")
                finally:
                    usage_sqlite.plan_usage = original
        finally:
            server.stop()


if __name__ == "__main__":
    main()
