"""The month-end forecast: its pieces, and a backtest against the straight line."""

from __future__ import annotations

import importlib.util
import math
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstile.alerts.forecast import (
    ForecastParams,
    Smoother,
    forecast_period,
    month_period,
    straight_line,
    weekday_factors,
)

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "backtest_forecast.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("backtest_forecast", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["backtest_forecast"] = module
    spec.loader.exec_module(module)
    return module


def days(start: date, values: list[float]) -> list[tuple[date, float]]:
    return [(start + timedelta(days=i), v) for i, v in enumerate(values)]


def test_straight_line() -> None:
    assert straight_line(100.0, 2.0, 30) == 1500.0
    assert straight_line(100.0, 0.0, 30) == 100.0


def test_month_period_follows_the_time_zone() -> None:
    now = datetime(2026, 3, 31, 22, 30, tzinfo=UTC).timestamp()
    utc = month_period(now, "UTC")
    assert (utc.start, utc.end, utc.today) == (date(2026, 3, 1), date(2026, 4, 1),
                                               date(2026, 3, 31))
    assert utc.today_fraction == pytest.approx(22.5 / 24)
    berlin = month_period(now, "Europe/Berlin")  # already 00:30 on 1 April there
    assert (berlin.start, berlin.days, berlin.today) == (date(2026, 4, 1), 30,
                                                         date(2026, 4, 1))
    assert berlin.today_fraction == pytest.approx(0.5 / 24)
    dst = month_period(datetime(2026, 3, 29, 12, 0, tzinfo=UTC).timestamp(), "Europe/Berlin")
    assert dst.today_fraction == pytest.approx(13 / 23)  # a 23-hour day


def test_constant_history_projects_the_same_burn() -> None:
    history = days(date(2026, 2, 1), [1000.0] * 40)
    f = forecast_period(history, today=date(2026, 3, 12), today_value=250.0,
                        today_fraction=0.25, budget=20_000)
    assert f.projected_total == pytest.approx(31_000, rel=1e-6)
    assert f.spent == pytest.approx(11_250)
    assert f.low <= f.projected_total <= f.high
    assert f.days_until_exhausted == pytest.approx(0.75 + 8 + 0.0, abs=0.01)
    assert f.days_until(11_000) == 0.0
    assert f.days_until(1e9) is None
    assert f.method == "level"


def test_missing_days_count_as_zero() -> None:
    history = [(date(2026, 3, 1), 1000.0), (date(2026, 3, 9), 1000.0)]
    f = forecast_period(history, today=date(2026, 3, 10), today_value=0.0,
                        today_fraction=0.0)
    assert f.spent == 2000.0
    assert f.projected_total < 2000.0 + 22 * 1000.0


def test_no_history_falls_back_to_todays_run_rate() -> None:
    f = forecast_period([], today=date(2026, 3, 30), today_value=100.0, today_fraction=0.5)
    assert f.method == "run-rate"
    assert f.projected_total == pytest.approx(100 + 100 + 200)
    empty = forecast_period([], today=date(2026, 3, 30), today_value=0.0, today_fraction=0.0)
    assert empty.projected_total == 0.0 and empty.days_until_exhausted is None


def test_late_in_the_day_the_run_rate_speaks() -> None:
    history = days(date(2026, 2, 1), [1000.0] * 58)  # up to 30 March
    f = forecast_period(history, today=date(2026, 3, 31), today_value=5000.0,
                        today_fraction=0.9)
    # The last tenth of the day at 0.9 × the run rate (5000 / 0.9) + 0.1 × the model (1000).
    rest = 0.1 * (0.9 * 5000 / 0.9 + 0.1 * 1000)
    assert f.projected_total == pytest.approx(30 * 1000 + 5000 + rest)
    early = forecast_period(history, today=date(2026, 3, 31), today_value=500.0,
                            today_fraction=0.01)
    assert early.projected_total < 30 * 1000 + 2000  # a first-minute burst is not a rate


def test_weekday_factors_find_a_weekly_cycle_and_ignore_short_history() -> None:
    start = date(2026, 1, 5)  # a Monday
    weekly = days(start, [5.0 if (i % 7) < 5 else 1.0 for i in range(42)])
    factors = weekday_factors(weekly)
    assert factors[0] == pytest.approx(factors[4], rel=1e-6)
    assert factors[0] / factors[6] == pytest.approx(5.0, rel=0.25)
    assert sum(factors) / 7 == pytest.approx(1.0)
    assert weekday_factors(weekly[:10]) == [1.0] * 7


def test_a_growing_history_is_extrapolated() -> None:
    history = days(date(2026, 1, 1), [1000.0 * 1.03 ** i for i in range(68)])
    today = date(2026, 3, 10)
    f = forecast_period(history, today=today, today_value=1000 * 1.03 ** 68 / 2,
                        today_fraction=0.5)
    actual = sum(1000 * 1.03 ** i for i in range(59, 90))
    assert f.method.startswith("damped-growth")
    assert f.projected_total == pytest.approx(actual, rel=0.05)


# --- backtest --------------------------------------------------------------------------------

def test_backtest_beats_the_straight_line() -> None:
    bench = load_benchmark()
    results = {name: bench.run_case(name, seeds=(1,)) for name in bench.CASES}
    summary = {n: (round(r.method_mape, 4), round(r.straight_mape, 4))
               for n, r in results.items()}
    # Measured (seed 1): growing 3.5 % vs 21.0 %, weekly 1.7 % vs 8.2 %, steady 1.4 % vs
    # 1.9 %, spike 11.8 % vs 16.7 %. Without weekday factors weekly is 0.54× the line, and
    # without a trend growing is 1.03×: the next test checks these thresholds catch that.
    assert results["growing"].method_mape < 0.5 * results["growing"].straight_mape, summary
    assert results["weekly"].method_mape < 0.45 * results["weekly"].straight_mape, summary
    for name in ("steady", "spike"):
        assert results[name].method_mape <= 1.10 * results[name].straight_mape, summary


def test_the_backtest_thresholds_can_fail() -> None:
    """Without weekday factors, or without a trend, the same thresholds are missed."""
    bench = load_benchmark()
    no_season = ForecastParams(season_weeks=0)
    no_trend = ForecastParams(smoothers=(Smoother("level", 0.15),))
    months = bench.MONTHS[:6]
    weekly = bench.run_case("weekly", seeds=(1,), months=months, params=no_season)
    growing = bench.run_case("growing", seeds=(1,), months=months, params=no_trend)
    assert not weekly.method_mape < 0.45 * weekly.straight_mape
    assert not growing.method_mape < 0.5 * growing.straight_mape


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(min_value=0, max_value=1e12), max_size=70),
       today_value=st.floats(min_value=0, max_value=1e12),
       fraction=st.floats(min_value=0, max_value=1),
       offset=st.integers(min_value=0, max_value=400))
def test_any_history_gives_a_sane_forecast(values: list[float], today_value: float,
                                           fraction: float, offset: int) -> None:
    today = date(2025, 1, 1) + timedelta(days=offset)
    history = days(today - timedelta(days=len(values)), values)
    f = forecast_period(history, today=today, today_value=today_value,
                        today_fraction=fraction, budget=1e9)
    assert math.isfinite(f.projected_total) and math.isfinite(f.high)
    assert f.spent <= f.low <= f.projected_total <= f.high
    assert f.days_until_exhausted is None or f.days_until_exhausted >= 0


@pytest.mark.parametrize("zeros", [1, 3, 10])
@pytest.mark.parametrize("ones", [5, 20, 40])
def test_a_history_that_starts_at_zero_gives_a_finite_range(zeros: int, ones: int) -> None:
    values = [0.0] * zeros + [1.0] * ones
    today = date(2025, 1, 1)
    f = forecast_period(days(today - timedelta(days=len(values)), values), today=today,
                        today_value=0.0, today_fraction=0.0, budget=1e9)
    assert math.isfinite(f.high) and f.spent <= f.low <= f.projected_total <= f.high
