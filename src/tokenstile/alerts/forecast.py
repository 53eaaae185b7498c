"""Month-end projection of usage (tokens or nano-USD): pure functions, no clock, no I/O.

Why not a straight line: ``month_to_date / days_elapsed * days_in_month`` lags any growth
(the average of the month so far is always behind today's rate), swings with the weekday
the month started on (a month that opens on a weekend looks cheap) and, after a one-day
spike, multiplies the spike by the whole month. The method here keeps the line's virtue
(no fitting, a few lines of arithmetic) and fixes those three faults:

1. **History.** Completed days of the current and previous periods, with missing dates
   filled as zero (a usage query returns only days that had requests).
2. **Weekday seasonality.** Each day is divided by a centred 7-day moving average
   (classical decomposition, so a growing series does not bias the ratios); the factor of
   a weekday is the median of its ratios over the last ``season_weeks`` weeks, normalised
   to mean 1 and shrunk toward 1 by how much of their spread day-to-day noise could
   explain (so noise does not pose as a weekly cycle; with a single week of ratios, by
   ``n / (n + season_shrink)``). With less than two weeks of history all factors are 1.
3. **Smoothed burn.** Exponential smoothing of the de-seasonalised series, chosen from a
   small family (``SMOOTHERS``): a level alone (an exponentially weighted mean), Holt's
   linear trend with damping, and Holt's trend on log(usage) with light damping (growth
   that compounds, like a feature being adopted). Each is run over the history; the one
   whose forecasts of the next ``h``-day sums (``h`` = days left in the period) were
   closest over the history is used, so a trend is extrapolated only where it has proved
   itself, and a flat series keeps a flat forecast. Observations further than ``clip``
   robust scales (an EWMA of absolute one-step errors) from the one-step forecast are
   clipped before they update level and trend, so a one-day spike counts once in the
   total but does not become the burn rate. The forecast ``h`` days ahead is the
   smoother's ``h``-step value × the weekday factor, never below zero.
4. **Today.** What is left of today is ``(1 - f) ×`` a blend of today's run rate
   (``today_value / f``, per day) and the model's day forecast, weighted ``f`` and
   ``1 - f``, where ``f`` is the fraction of today elapsed: early in the day the model
   speaks, late the run rate does. (``f × run rate`` is ``today_value``, so a first
   minute's burst never divides by a tiny ``f``.)
5. **Total.** Month-to-date (completed days + today so far) + today's remainder + the
   forecast of every remaining day of the period.
6. **Interval.** About 90 %: the wider of (a) the 90th percentile of the chosen smoother's
   relative errors on ``h``-day sums over the history, applied to the forecast remainder,
   and (b) ``1.645 σ √(h + h² α/(2-α))`` from the one-step residuals ``σ`` (daily noise
   plus the level's own uncertainty, which every remaining day shares). The low end never
   goes below what is already spent.

Measured by ``benchmarks/backtest_forecast.py`` (MAPE of the month-end projection, every
day of 12 months × 3 seeds, this method vs the straight line): steady ±10 % 1.4 % vs
1.9 %; growing 3 %/day 3.7 % vs 21.0 %; weekdays 5× weekends 1.7 % vs 7.9 %; one 10× day
12.7 % vs 17.8 % (before the spike no method can know it).

``backtest`` replays any daily series (real ledger history, or the synthetic cases of the
benchmark) and reports the mean absolute percentage error of both methods.
"""

from __future__ import annotations

import calendar
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from tokenstile.limits.windows import Window, window_bounds

MIN_RUN_RATE_FRACTION = 1 / 24


@dataclass(frozen=True, slots=True)
class ForecastParams:
    """Tuning of the method; the defaults are the ones the backtest measures."""

    smoothers: tuple[Smoother, ...] = ()
    """Candidates; empty means ``SMOOTHERS``."""
    season_weeks: int = 4
    season_shrink: float = 1.0
    clip: float = 4.0
    coverage: float = 0.9


DEFAULT_PARAMS = ForecastParams()


@dataclass(frozen=True, slots=True)
class Forecast:
    """Where the period is heading. All amounts in the series' own unit."""

    projected_total: float
    low: float
    high: float
    days_until_exhausted: float | None
    method: str
    spent: float = 0.0
    daily_burn: float = 0.0
    path: tuple[float, ...] = field(default=(), repr=False)
    """Expected usage of the rest of today, then of each remaining day of the period."""
    today_fraction: float = 0.0

    def days_until(self, budget: float) -> float | None:
        """Days from now until ``budget`` is spent, or None if it lasts the period."""
        return _exhaustion(self.spent, self.path, self.today_fraction, budget)

    def to_dict(self) -> dict[str, object]:
        return {
            "projected_total": self.projected_total, "low": self.low, "high": self.high,
            "days_until_exhausted": self.days_until_exhausted, "method": self.method,
            "spent": self.spent, "daily_burn": self.daily_burn,
        }


@dataclass(frozen=True, slots=True)
class Period:
    """The calendar month containing ``now`` in a time zone, and where today stands."""

    start: date
    end: date
    """First day of the next period (exclusive)."""
    today: date
    today_fraction: float

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def month_bounds(day: date) -> tuple[date, date]:
    first = day.replace(day=1)
    last = calendar.monthrange(day.year, day.month)[1]
    return first, first + timedelta(days=last)


def month_period(now: float, tz: str) -> Period:
    """The local month containing ``now`` and the fraction of today elapsed (DST-aware)."""
    day_start, day_end = window_bounds(Window("day", tz=tz), now)
    today = datetime.fromtimestamp(now, ZoneInfo(tz)).date()
    start, end = month_bounds(today)
    fraction = (now - day_start) / (day_end - day_start) if day_end > day_start else 0.0
    return Period(start, end, today, min(max(fraction, 0.0), 1.0))


def straight_line(month_to_date: float, days_elapsed: float, days_in_period: int) -> float:
    """The baseline: the average day so far, times the length of the period."""
    if days_elapsed <= 0:
        return month_to_date
    return month_to_date / days_elapsed * days_in_period


def _filled(history: Iterable[tuple[date, float]], before: date) -> list[tuple[date, float]]:
    """Daily values from the first known date to the day before ``before``, gaps as 0."""
    values: dict[date, float] = {}
    for day, value in history:
        if day < before:
            values[day] = values.get(day, 0.0) + float(value)
    if not values:
        return []
    day = min(values)
    out = []
    while day < before:
        out.append((day, values.get(day, 0.0)))
        day += timedelta(days=1)
    return out


def _centred_ma7(values: Sequence[float]) -> list[float | None]:
    out: list[float | None] = [None] * len(values)
    for i in range(3, len(values) - 3):
        out[i] = sum(values[i - 3:i + 4]) / 7
    return out


def weekday_factors(series: Sequence[tuple[date, float]],
                    params: ForecastParams = DEFAULT_PARAMS) -> list[float]:
    """Seven multipliers (Monday first), mean 1; all 1 when history is too short.

    Each weekday's factor is the median of its ratios to the centred weekly average. The
    factors are shrunk toward 1 by how much of their spread the day-to-day noise could
    explain (an empirical-Bayes weight ``1 - noise variance / spread variance``), so a flat
    but noisy series gets flat factors and a clear weekly cycle keeps its full size. With a
    single ratio per weekday there is no noise estimate, and the weight is
    ``n / (n + season_shrink)``.
    """
    window = list(series[-(params.season_weeks * 7 + 6):])
    if len(window) < 14:
        return [1.0] * 7
    values = [v for _, v in window]
    ma = _centred_ma7(values)
    ratios: list[list[float]] = [[] for _ in range(7)]
    for (day, value), avg in zip(window, ma, strict=True):
        if avg is not None and avg > 0:
            ratios[day.weekday()].append(value / avg)
    raw = [statistics.median(items) if items else 1.0 for items in ratios]
    mean = sum(raw) / 7
    if mean <= 0:
        return [1.0] * 7
    raw = [r / mean for r in raw]
    counts = [len(items) for items in ratios]
    dof = sum(n - 1 for n in counts if n >= 2)
    spread = sum((r - 1.0) ** 2 for r in raw) / 6
    if dof >= 7 and spread > 0:
        within = sum((x - statistics.fmean(items)) ** 2
                     for items in ratios if len(items) >= 2 for x in items) / dof
        # The variance of a median of n draws is about pi/2 times that of their mean.
        noise = statistics.fmean(math.pi / 2 * within / max(n, 1) for n in counts)
        weights = [max(0.0, 1.0 - noise / spread)] * 7
    else:
        weights = [n / (n + params.season_shrink) for n in counts]
    out = [1.0 + (r - 1.0) * w for r, w in zip(raw, weights, strict=True)]
    norm = sum(out) / 7
    return [f / norm for f in out]


@dataclass(frozen=True, slots=True)
class Smoother:
    """One member of the family the forecast chooses from by in-sample validation."""

    name: str
    alpha: float
    beta: float = 0.0
    phi: float = 1.0
    log: bool = False
    """Smooth log(usage): a trend then means compounding growth, not a constant slope."""


SMOOTHERS: tuple[Smoother, ...] = (
    Smoother("level", 0.15),
    Smoother("damped-trend", 0.3, 0.1, 0.98),
    Smoother("damped-growth", 0.3, 0.1, 0.99, log=True),
)


@dataclass(slots=True)
class _Fit:
    """A smoother run over the whole history: its state after every day."""

    smoother: Smoother
    offset: float
    levels: list[float]
    trends: list[float]
    residuals: list[float]
    """One-step errors in the series' own unit."""

    def ahead(self, t: int, h: int) -> float:
        """Forecast ``h`` days after day ``t`` (the state after ``t`` was seen)."""
        s = self.smoother
        damp = h if s.phi == 1.0 else s.phi * (1 - s.phi ** h) / (1 - s.phi)
        value = self.levels[t] + self.trends[t] * damp
        if s.log:
            return max(0.0, math.exp(min(value, 700.0)) - self.offset)
        return max(0.0, value)

    def sum_ahead(self, t: int, h: int) -> float:
        return sum(self.ahead(t, k) for k in range(1, h + 1))


def _fit(values: Sequence[float], smoother: Smoother, clip: float) -> _Fit:
    """Level and trend from the first one or two weeks, then Holt's updates with clipping."""
    positive = [v for v in values if v > 0]
    # The floor keeps log(0 + offset) defined when the only positive values are tiny.
    offset = max(0.01 * statistics.median(positive), 1e-9) if positive else 1.0
    ys = [math.log(v + offset) for v in values] if smoother.log else list(values)
    first = ys[: min(7, len(ys))]
    base = statistics.median(first)
    trend = 0.0
    if smoother.beta > 0 and len(ys) >= 14:
        trend = (statistics.median(ys[7:14]) - base) / 7
    spread = statistics.median(abs(v - base) for v in first) if len(first) > 1 else 0.0
    floor = 0.05 if smoother.log else abs(base) * 0.05
    scale = max(1.4826 * spread, floor, 1e-9)
    # The first week's median sits at its middle day; carry it to the week's last day.
    level = base + 3 * trend
    fit = _Fit(smoother, offset, [], [], [])
    for i, y in enumerate(ys):
        if i < len(first):
            fit.levels.append(level - (len(first) - 1 - i) * trend)
            fit.trends.append(trend)
            continue
        predicted = level + smoother.phi * trend
        error = y - predicted
        limit = clip * scale
        clipped = max(-limit, min(limit, error))
        previous = level
        level = predicted + smoother.alpha * clipped
        trend = smoother.beta * (level - previous) + (1 - smoother.beta) * smoother.phi * trend
        scale = max(0.9 * scale + 0.1 * 1.25 * abs(clipped), floor * 0.2, 1e-9)
        fit.residuals.append(values[i] - fit.ahead(i - 1, 1))
        fit.levels.append(level)
        fit.trends.append(trend)
    return fit


WARMUP_DAYS = 14


def _validation_errors(fit: _Fit, values: Sequence[float], horizon: int) -> list[float]:
    """Relative errors of ``horizon``-day sums forecast from every day after the warm-up."""
    out = []
    for t in range(WARMUP_DAYS - 1, len(values) - horizon):
        actual = sum(values[t + 1:t + 1 + horizon])
        if actual > 0:
            out.append((fit.sum_ahead(t, horizon) - actual) / actual)
    return out


def _exhaustion(spent: float, path: Sequence[float], today_fraction: float,
                budget: float) -> float | None:
    if spent >= budget:
        return 0.0
    left = budget - spent
    elapsed = 0.0
    for i, expected in enumerate(path):
        length = (1.0 - today_fraction) if i == 0 else 1.0
        if expected >= left and expected > 0:
            return elapsed + length * left / expected
        left -= expected
        elapsed += length
    return None


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def forecast_period(
    history: Iterable[tuple[date, float]],
    *,
    today: date,
    today_value: float,
    today_fraction: float,
    period: tuple[date, date] | None = None,
    budget: float | None = None,
    params: ForecastParams = DEFAULT_PARAMS,
) -> Forecast:
    """Project the period's total from completed days, today so far, and the time of day.

    ``history`` holds completed days (``(date, value)``; today and later are ignored),
    ``period`` is ``(first day, first day of the next period)`` and defaults to today's
    calendar month.
    """
    start, end = period or month_bounds(today)
    fraction = min(max(today_fraction, 0.0), 1.0)
    series = _filled(history, today)
    done = sum(v for d, v in series if d >= start)
    spent = done + today_value
    remaining_days = [start + timedelta(days=i) for i in range((end - start).days)]
    remaining_days = [d for d in remaining_days if d > today]
    if not series:
        return _run_rate_only(spent, today_value, fraction, len(remaining_days), budget)
    factors = weekday_factors(series, params)
    values = [v / factors[d.weekday()] for d, v in series]
    smoothers = params.smoothers or SMOOTHERS
    fits = [_fit(values, s, params.clip) for s in smoothers]
    horizon = len(remaining_days) + 1
    check = min(horizon, len(values) - WARMUP_DAYS - 6)
    chosen = fits[0]
    errors: list[float] = []
    if check >= 1:
        scored = []
        for fit in fits:
            errs = _validation_errors(fit, values, check)
            scored.append((statistics.fmean(abs(e) for e in errs), fit, errs))
        _, chosen, errors = min(scored, key=lambda item: item[0])
    t = len(values) - 1
    model_today = chosen.ahead(t, 1) * factors[today.weekday()]
    today_rest = (1 - fraction) * (today_value + (1 - fraction) * model_today)
    path = [today_rest]
    for h, day in enumerate(remaining_days, start=2):
        path.append(chosen.ahead(t, h) * factors[day.weekday()])
    future = sum(path)
    projected = spent + future
    residuals = chosen.residuals or [chosen.ahead(t, 1) * 0.5]
    sigma = 1.4826 * statistics.median(abs(r) for r in residuals)
    a = chosen.smoother.alpha
    steps = len(remaining_days) + (1 - fraction)
    spread = 1.645 * sigma * math.sqrt(steps + steps ** 2 * a / (2 - a))
    # A window whose actual sum was 0 gives an infinite relative error: leave those out.
    finite = [abs(e) for e in errors if math.isfinite(e)]
    if len(finite) >= 5:
        relative = _quantile(finite, params.coverage)
        spread = max(spread, future * relative * math.sqrt(max(1.0, horizon / check)))
    low = max(spent, projected - spread)
    high = projected + spread
    exhausted = None if budget is None else _exhaustion(spent, path, fraction, budget)
    weekly = min(factors) > 0 and max(factors) / min(factors) > 1.05
    method = f"{chosen.smoother.name}{'+weekday' if weekly else ''}"
    return Forecast(projected, low, high, exhausted, method, spent,
                    chosen.ahead(t, 1), tuple(path), fraction)


def _run_rate_only(spent: float, today_value: float, fraction: float, remaining: int,
                   budget: float | None) -> Forecast:
    """No completed day yet: today's run rate is all there is."""
    # At least an hour's worth of the day: a burst in the first seconds is not a rate.
    rate = today_value / max(fraction, MIN_RUN_RATE_FRACTION)
    path = [rate * (1 - fraction)] + [rate] * remaining
    projected = spent + sum(path)
    exhausted = None if budget is None else _exhaustion(spent, path, fraction, budget)
    return Forecast(projected, spent, max(projected * 2, spent), exhausted, "run-rate", spent,
                    rate, tuple(path), fraction)


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """Mean absolute percentage error (0.1 = 10 %) of the month-end projection."""

    method_mape: float
    straight_mape: float
    points: int
    coverage: float
    """Share of forecasts whose [low, high] held the actual total."""


def backtest(
    series: Sequence[tuple[date, float]],
    month: date,
    *,
    today_fraction: float = 0.5,
    params: ForecastParams = DEFAULT_PARAMS,
) -> BacktestResult:
    """Forecast the month containing ``month`` on every one of its days, from the days
    before it plus ``today_fraction`` of the day's own value, and score both methods.

    ``series`` must cover the whole month.
    """
    start, end = month_bounds(month)
    values = dict(series)
    actual = sum(values.get(start + timedelta(days=i), 0.0) for i in range((end - start).days))
    if actual <= 0:
        raise ValueError("the month to backtest has no usage")
    days = (end - start).days
    errors: list[float] = []
    baseline: list[float] = []
    covered = 0
    for i in range(days):
        today = start + timedelta(days=i)
        history = [(d, v) for d, v in series if d < today]
        partial = values.get(today, 0.0) * today_fraction
        result = forecast_period(history, today=today, today_value=partial,
                                 today_fraction=today_fraction, params=params)
        errors.append(abs(result.projected_total - actual) / actual)
        covered += result.low <= actual <= result.high
        mtd = sum(v for d, v in history if d >= start) + partial
        line = straight_line(mtd, i + today_fraction, days)
        baseline.append(abs(line - actual) / actual)
    return BacktestResult(sum(errors) / days, sum(baseline) / days, days, covered / days)
