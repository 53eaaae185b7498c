"""Alert rules over plain numbers, and thresholds firing once per window end to end."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstile.alerts.engine import AlertEngine
from tokenstile.alerts.forecast import forecast_period
from tokenstile.alerts.rules import (
    Alert,
    AnomalySettings,
    SummaryInput,
    anomaly_alert,
    anomaly_score,
    budget_threshold_alerts,
    daily_summary,
    efficiency_alert,
    hourly_cost_alert,
    limit_blocked_alert,
    limit_threshold_alerts,
    projection_alert,
    thresholds_crossed,
)
from tokenstile.clock import FakeClock
from tokenstile.limits.model import Limit, Threshold
from tokenstile.limits.windows import Window
from tokenstile.stores.alerts_memory import MemoryAlertHistory
from tokenstile.types import usd_to_nano

NOW = datetime(2026, 3, 10, 9, 30, tzinfo=UTC).timestamp()


def test_thresholds_crossed() -> None:
    assert thresholds_crossed(1000, 0, 499) == []
    assert thresholds_crossed(1000, 0, 500) == [0.5]
    assert thresholds_crossed(1000, 499, 960) == [0.5, 0.75, 0.9, 0.95]
    assert thresholds_crossed(1000, 500, 1000) == [0.75, 0.9, 0.95, 1.0]
    assert thresholds_crossed(1000, 960, 400) == []  # settled below the reservation
    assert thresholds_crossed(0, 0, 10) == []
    assert thresholds_crossed(1000, 0, 800, [0.8, 0.95]) == [0.8]
    assert thresholds_crossed(1000, 0, 1000, [1.0, 0.5, 1.0]) == [0.5, 1.0]  # once, in order


def test_budget_threshold_alerts_use_the_limits_own_thresholds() -> None:
    thresholds = (Threshold(0.8, "warn", ("slack", "email")), Threshold(0.95, "throttle"),
                  Threshold(1.0, "block", ("pager",)))
    alerts = budget_threshold_alerts(
        limit_name="organization.monthly_budget_usd", scope="organization",
        scope_id="acme", unit="usd", amount=usd_to_nano(100), window_kind="month",
        label="202603", before=usd_to_nano(79), after=usd_to_nano(96), now=NOW,
        thresholds=thresholds, resets="2026-04-01 00:00 UTC")
    assert [a.data["threshold"] for a in alerts] == [0.8, 0.95]
    first, second = alerts
    assert first.channels == ("slack", "email") and second.channels == ()
    assert first.severity == "info" and second.severity == "warning"
    assert first.dedupe_key == "budget:organization.monthly_budget_usd:acme:202603:0.8"
    assert "organization 'acme' has used 80% of its monthly budget" in first.title
    assert "$96.00 of $100.00 (96.0%)" in first.message
    assert "resets at 2026-04-01 00:00 UTC" in first.message
    assert "Action at this threshold: throttle" in second.message


def daily_limit(tz: str = "UTC", **kw: object) -> Limit:
    return Limit(name="projects.demo.daily_limit", scope="project",
                 window=Window("day", tz=tz), unit="tokens", amount=1000, **kw)  # type: ignore[arg-type]


def test_limit_threshold_alerts_default_fractions_and_labels() -> None:
    limit = daily_limit("Europe/Berlin")
    alerts = limit_threshold_alerts(limit, "demo", 100, 1000, NOW)
    assert [a.data["threshold"] for a in alerts] == [0.5, 0.75, 0.9, 0.95, 1.0]
    assert [a.severity for a in alerts] == ["info", "info", "warning", "warning", "critical"]
    assert all(a.data["window_label"] == "20260310" for a in alerts)
    assert alerts[-1].dedupe_key == "budget:projects.demo.daily_limit:demo:20260310:1"
    per_request = Limit(name="r", scope="global", window=Window("request"), unit="tokens",
                        amount=10)
    assert limit_threshold_alerts(per_request, "global", 0, 100, NOW) == []


def test_blocked_alert_shares_the_100_percent_key() -> None:
    limit = daily_limit()
    blocked = limit_blocked_alert(limit, "demo", used=990, needed=200, now=NOW)
    [full] = limit_threshold_alerts(limit, "demo", 990, 1000, NOW)
    assert blocked.dedupe_key == full.dedupe_key
    assert blocked.severity == "critical" and "refused" in blocked.message


class Recorder:
    name = "rec"

    def __init__(self) -> None:
        self.sent: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        self.sent.append(alert)

    async def close(self) -> None:
        return None


async def test_thresholds_fire_once_per_window_and_rearm_the_next_day() -> None:
    clock = FakeClock(datetime(2026, 3, 10, 8, 0, tzinfo=UTC))
    rec = Recorder()
    eng = AlertEngine({"rec": rec}, MemoryAlertHistory(), clock)
    await eng.start()
    limit = daily_limit()

    def settle(before: int, after: int) -> None:
        eng.submit_all(limit_threshold_alerts(limit, "demo", before, after, clock.now()))

    settle(0, 400)
    settle(400, 520)          # crosses 50 %
    settle(450, 530)          # a concurrent request saw the same crossing
    clock.advance(3600)
    settle(520, 480)          # settled below its reservation: nothing
    settle(480, 560)          # back over 50 % in the same day: already told
    await eng.flush()
    assert [a.data["threshold"] for a in rec.sent] == [0.5]
    clock.set(datetime(2026, 3, 11, 0, 5, tzinfo=UTC))  # next day: a new window
    settle(0, 510)
    settle(510, 960)
    await eng.flush()
    await eng.close()
    assert [(a.data["window_label"], a.data["threshold"]) for a in rec.sent] == [
        ("20260310", 0.5), ("20260311", 0.5), ("20260311", 0.75), ("20260311", 0.9),
        ("20260311", 0.95)]


# --- anomaly -------------------------------------------------------------------------------

flat_value = st.floats(min_value=0, max_value=1e12, allow_nan=False)
history_len = st.integers(min_value=24, max_value=200)


@given(value=flat_value, n=history_len)
def test_no_alarm_on_a_constant_series(value: float, n: int) -> None:
    assert anomaly_alert(subject="global", unit="tokens", baseline=[value] * n, value=value,
                         bucket_label="h", now=NOW) is None


@given(level=st.floats(min_value=1, max_value=1e12),
       noise=st.lists(st.floats(min_value=-0.3, max_value=0.3), min_size=25, max_size=200))
def test_no_alarm_on_a_flat_noisy_series(level: float, noise: list[float]) -> None:
    series = [level * (1 + e) for e in noise]
    score = anomaly_score(series[:-1], series[-1])
    assert score is not None and not score.anomalous


@given(profile=st.lists(st.floats(min_value=0, max_value=1e9), min_size=24, max_size=24),
       days=st.integers(min_value=2, max_value=7),
       seed=st.integers(min_value=0, max_value=2**32), hour=st.integers(0, 23))
def test_no_alarm_on_a_repeating_daily_rhythm(profile: list[float], days: int, seed: int,
                                              hour: int) -> None:
    rng = random.Random(seed)
    series = [profile[i % 24] * rng.uniform(0.92, 1.08) for i in range(days * 24 + hour)]
    value = profile[hour] * rng.uniform(0.92, 1.08)
    score = anomaly_score(series, value)
    assert score is not None and not score.anomalous


@given(baseline=st.lists(st.floats(min_value=0, max_value=1e9), min_size=24, max_size=200),
       factor=st.floats(min_value=10, max_value=1000))
def test_a_runaway_always_fires(baseline: list[float], factor: float) -> None:
    settings_ = AnomalySettings(floor=1000)
    value = max(baseline) * factor + 1001
    alert = anomaly_alert(subject="project:search", unit="usd", baseline=baseline, value=value,
                          bucket_label="2026-03-10T09:00", now=NOW, settings=settings_)
    assert alert is not None
    assert alert.dedupe_key == "anomaly:project:search:usd:2026-03-10T09:00"


@settings(max_examples=50)
@given(n=st.integers(min_value=0, max_value=23))
def test_too_little_history_never_fires(n: int) -> None:
    assert anomaly_score([1.0] * n, 1e9) is None


def test_anomaly_floor_and_message() -> None:
    quiet = [3.0] * 48
    assert anomaly_alert(subject="global", unit="tokens", baseline=quiet, value=40,
                         bucket_label="h", now=NOW, settings=AnomalySettings(floor=1000)) is None
    busy = [10_000.0 + (i % 5) * 100 for i in range(168)]
    alert = anomaly_alert(subject="global", unit="tokens", baseline=busy, value=150_000,
                          bucket_label="2026-03-10T09:00", now=NOW)
    assert alert is not None and alert.severity == "critical"
    assert "14.7× the usual hour" in alert.title
    assert "median hour of the last 168" in alert.message


# --- other rules ---------------------------------------------------------------------------

def test_efficiency() -> None:
    assert efficiency_alert(dimension="feature", name="chat", tokens=100_000, requests=10,
                            max_average=2000, window_label="20260310", now=NOW) is None
    assert efficiency_alert(dimension="feature", name="chat", tokens=20_000, requests=20,
                            max_average=2000, window_label="20260310", now=NOW) is None
    alert = efficiency_alert(dimension="feature", name="chat", tokens=2_000_000, requests=100,
                             max_average=2000, window_label="20260310", now=NOW)
    assert alert is not None
    assert alert.title == "feature 'chat' averages 20,000 tokens per request"
    assert alert.dedupe_key == "efficiency:feature:chat:20260310"


def test_hourly_cost() -> None:
    threshold = usd_to_nano(50)
    assert hourly_cost_alert(cost_nano=threshold, threshold_nano=threshold,
                             hour_label="20260310T09", now=NOW) is None
    alert = hourly_cost_alert(cost_nano=usd_to_nano(73.5), threshold_nano=threshold,
                              hour_label="20260310T09", now=NOW)
    assert alert is not None
    assert alert.title == "Hourly LLM spend of global exceeded $50.00"
    assert "$73.50" in alert.message and alert.data["cost_usd"] == 73.5


def test_projection() -> None:
    history = [(date(2026, 2, 1) + timedelta(days=i), 1_000_000.0) for i in range(37)]
    forecast = forecast_period(history, today=date(2026, 3, 10), today_value=500_000.0,
                               today_fraction=0.5)
    assert abs(forecast.projected_total - 31_000_000) < 500_000
    common = dict(limit_name="organization.monthly_budget", scope="organization",
                  scope_id="acme", unit="tokens", forecast=forecast, label="202603", now=NOW)
    assert projection_alert(budget=40_000_000, **common) is None  # type: ignore[arg-type]
    alert = projection_alert(budget=20_000_000, **common)  # type: ignore[arg-type]
    assert alert is not None and alert.severity == "critical"
    assert "runs out in 10.5 days" in alert.message
    assert alert.dedupe_key == "projection:organization.monthly_budget:acme:202603"
    noisy = [(d, v * (1 + 0.1 * ((i * 7919) % 11 - 5) / 5)) for i, (d, v) in enumerate(history)]
    uncertain = forecast_period(noisy, today=date(2026, 3, 10), today_value=500_000.0,
                                today_fraction=0.5)
    assert uncertain.low < uncertain.projected_total < uncertain.high
    budget = (uncertain.low + uncertain.projected_total) / 2
    close_call = projection_alert(budget=budget, **{**common, "forecast": uncertain})  # type: ignore[arg-type]
    assert close_call is not None and close_call.severity == "warning"


def test_daily_summary_from_usage_rows() -> None:
    totals = {"requests": 1200, "input_tokens": 900_000, "output_tokens": 100_000,
              "cost_nano": usd_to_nano(12.5), "blocked": 7}
    by_project = [
        {"project": "search", "requests": 200, "input_tokens": 100, "output_tokens": 0,
         "cost_nano": usd_to_nano(2)},
        {"project": "chat", "requests": 1000, "input_tokens": 800_000, "output_tokens": 90_000,
         "cost_nano": usd_to_nano(10.5), "blocked": 7},
    ]
    by_model = [{"served_model": "gpt-4o-mini", "requests": 1200, "input_tokens": 900_000,
                 "output_tokens": 100_000, "cost_nano": usd_to_nano(12.5)}]
    blocks = [{"block_reason": "budget:projects.chat.daily_limit", "blocked": 7}]
    alert = daily_summary(SummaryInput(totals, by_project, by_model, (), blocks),
                          day_label="2026-03-09", now=NOW)
    assert alert.title == "LLM usage on 2026-03-09: $12.50, 1,200 requests"
    assert alert.message.splitlines()[0] == ("1,200 requests, 1,000,000 tokens, $12.50, "
                                             "7 refused.")
    assert "Top projects: chat $10.50 (890,000 tokens); search $2.00 (100 tokens)" \
        in alert.message
    assert "Refusals: budget:projects.chat.daily_limit 7" in alert.message
    assert [p["name"] for p in alert.data["top_projects"]] == ["chat", "search"]
    assert alert.dedupe_key == "daily_summary:2026-03-09"
    assert alert.to_dict()["time"].startswith("2026-03-10T09:30")
