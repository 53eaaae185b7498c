"""Backtest of the month-end forecast against the straight line, on synthetic histories.

Each case is a daily usage series with two months of history before the month scored;
every day of that month is forecast at mid-day from the days before it (and half of the
day's own usage), and the mean absolute percentage error of the month-end projection is
averaged over the twelve months of 2025 (so every weekday opens a month) and a few seeds.

    python benchmarks/backtest_forecast.py
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from tokenstile.alerts.forecast import DEFAULT_PARAMS, BacktestResult, ForecastParams, backtest

BASE = 1_000_000.0
HISTORY_DAYS = 60
SEEDS = (1, 2, 3)
MONTHS = tuple(date(2025, m, 1) for m in range(1, 13))

Generator = Callable[[random.Random, date, date], list[tuple[date, float]]]


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


def steady(rng: random.Random, start: date, end: date) -> list[tuple[date, float]]:
    """The same burn every day, ±10 % noise."""
    return [(d, BASE * max(0.0, rng.gauss(1.0, 0.1))) for d in _days(start, end)]


def growing(rng: random.Random, start: date, end: date) -> list[tuple[date, float]]:
    """Compounding 3 % a day (a feature being adopted), ±5 % noise."""
    return [(d, BASE * 1.03 ** i * max(0.0, rng.gauss(1.0, 0.05)))
            for i, d in enumerate(_days(start, end))]


def weekly(rng: random.Random, start: date, end: date) -> list[tuple[date, float]]:
    """Weekdays five times the weekends, ±10 % noise."""
    return [(d, BASE * (5.0 if d.weekday() < 5 else 1.0) * max(0.0, rng.gauss(1.0, 0.1)))
            for d in _days(start, end)]


def spike(rng: random.Random, start: date, end: date) -> list[tuple[date, float]]:
    """Steady, with one day at 10× somewhere in the scored month (a runaway loop, fixed)."""
    out = steady(rng, start, end)
    month_days = [i for i, (d, _) in enumerate(out) if d >= end - timedelta(days=28)]
    i = rng.choice(month_days[3:-3])
    out[i] = (out[i][0], out[i][1] * 10)
    return out


CASES: dict[str, Generator] = {
    "steady": steady, "growing": growing, "weekly": weekly, "spike": spike,
}


@dataclass(frozen=True)
class CaseResult:
    name: str
    method_mape: float
    straight_mape: float
    coverage: float


def run_case(name: str, seeds: tuple[int, ...] = SEEDS, months: tuple[date, ...] = MONTHS,
             params: ForecastParams = DEFAULT_PARAMS) -> CaseResult:
    generate = CASES[name]
    results: list[BacktestResult] = []
    for seed in seeds:
        for month in months:
            rng = random.Random(f"{name}:{seed}:{month.isoformat()}")
            end = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
            series = generate(rng, month - timedelta(days=HISTORY_DAYS), end)
            results.append(backtest(series, month, params=params))
    return CaseResult(
        name,
        statistics.fmean(r.method_mape for r in results),
        statistics.fmean(r.straight_mape for r in results),
        statistics.fmean(r.coverage for r in results),
    )


def run_all() -> list[CaseResult]:
    return [run_case(name) for name in CASES]


def main() -> None:
    print(f"{'case':<10}{'method MAPE':>14}{'straight MAPE':>16}{'interval coverage':>20}")
    for r in run_all():
        print(f"{r.name:<10}{r.method_mape:>13.2%}{r.straight_mape:>16.2%}"
              f"{r.coverage:>20.0%}")


if __name__ == "__main__":
    main()
