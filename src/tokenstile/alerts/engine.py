"""Alert delivery off the hot path: a queue, retries, dedupe, and a history of what was sent.

A request that crosses a threshold hands its alert to ``AlertEngine.submit`` in O(1) and
goes on; one background task takes alerts from the queue and delivers each to its
channels concurrently (a slow SMTP server does not hold up a webhook), retrying failures
with exponential backoff and jitter up to a bounded number of attempts.

``PeriodicRules`` runs the rules that read the ledger (anomalies, hourly cost, efficiency,
projections, the daily summary) on a timer and submits what fires.

Dedupe is by ``Alert.dedupe_key`` and survives restarts when the history
(``tokenstile.stores.alerts``) is SQLite or PostgreSQL: the first process to record a key
delivers it; a later alert with the same key (the same threshold crossed again in the same
window, by a concurrent request or another worker process) is only recorded as seen. The
one exception is a channel whose delivery of that key failed for good: a later alert with
the key retries that channel. The trade-off is at-most-once across a crash: a process that
dies between recording an alert and delivering it leaves that alert recorded but unsent,
rather than risking duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from tokenstile.alerts.channels import Channel, DeliveryError
from tokenstile.alerts.forecast import Forecast, Period, forecast_period, month_period
from tokenstile.alerts.rules import (
    Alert,
    AnomalySettings,
    SummaryInput,
    anomaly_alert,
    daily_summary,
    efficiency_alert,
    hourly_cost_alert,
    projection_alert,
)
from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.limits.model import Limit
from tokenstile.limits.windows import Window, window_label, window_start
from tokenstile.stores.alerts import AlertHistory, AlertRecord, Delivery
from tokenstile.stores.database import Database, UsageQuery
from tokenstile.types import usd_to_nano

log = logging.getLogger("tokenstile.alerts")


@dataclass(slots=True)
class EngineStats:
    submitted: int = 0
    dropped: int = 0
    deduped: int = 0
    delivered: int = 0
    failed: int = 0
    history_errors: int = 0


class AlertEngine:
    """Deliver alerts in the background: ``submit`` never blocks and never raises.

    ``channels`` maps names (as thresholds and rules refer to them) to channels;
    ``default_channels`` are used for alerts that name none (default: every channel).
    The engine owns the history and the channels: ``start`` opens, ``close`` closes.
    """

    def __init__(
        self,
        channels: Mapping[str, Channel],
        history: AlertHistory,
        clock: Clock = SYSTEM_CLOCK,
        *,
        default_channels: Sequence[str] | None = None,
        max_attempts: int = 5,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        max_pending: int = 10_000,
        concurrency: int = 8,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.channels = dict(channels)
        self.history = history
        self.clock = clock
        self.default_channels = tuple(self.channels if default_channels is None
                                      else default_channels)
        self.max_attempts = max(1, max_attempts)
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_pending = max_pending
        self.stats = EngineStats()
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._pending: deque[Alert] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[str] = set()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._runner: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired: list[Channel] = []
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is None:
            await self.history.open()
            self._runner = asyncio.create_task(self._run(), name="tokenstile-alerts")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued, for at most ``timeout_s``; then stop and close."""
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._drained(), timeout_s)
            except TimeoutError:
                log.warning("alert delivery cut short at shutdown: %d queued, %d in flight",
                            len(self._pending), len(self._tasks))
            self._runner.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(self._runner, *self._tasks, return_exceptions=True)
            self._runner = None
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for channel in [*self._retired, *self.channels.values()]:
            with contextlib.suppress(Exception):
                await channel.close()
        await self.history.close()

    def reconfigure(self, channels: Mapping[str, Channel],
                    default_channels: Sequence[str] | None = None) -> None:
        """Deliver through ``channels`` from now on (a reloaded config). Deliveries under
        way take the new channel of their name at their next attempt; the old channels are
        closed once those deliveries are over."""
        old = list(self.channels.values())
        self.channels = dict(channels)
        self.default_channels = tuple(self.channels if default_channels is None
                                      else default_channels)
        under_way = list(self._tasks)

        async def retire() -> None:
            await asyncio.gather(*under_way, return_exceptions=True)
            for channel in old:
                with contextlib.suppress(Exception):
                    await channel.close()

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not started: nothing is under way
            self._retired.extend(old)
            return
        task = loop.create_task(retire(), name="tokenstile-old-channels")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drained(self) -> None:
        while self._pending or self._tasks:
            self._idle.clear()
            await self._idle.wait()

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every alert submitted so far has been handled."""
        self._wakeup.set()
        await asyncio.wait_for(self._drained(), timeout_s)

    # -- intake ---------------------------------------------------------------------------

    def submit(self, alert: Alert) -> bool:
        """Queue an alert (O(1)); False when the queue is full or the engine is closing."""
        if self._closing or len(self._pending) >= self.max_pending:
            self.stats.dropped += 1
            log.warning("alert queue full or closing; dropped %s", alert.dedupe_key)
            return False
        self.stats.submitted += 1
        self._pending.append(alert)
        self._wakeup.set()
        return True

    def submit_all(self, alerts: Iterable[Alert | None]) -> None:
        for alert in alerts:
            if alert is not None:
                self.submit(alert)

    @property
    def backlog(self) -> int:
        return len(self._pending) + len(self._tasks)

    async def recent(self, limit: int = 50, since: float | None = None) -> list[AlertRecord]:
        return await self.history.recent(limit, since)

    # -- delivery -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if not self._tasks:
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            alert = self._pending.popleft()
            task = asyncio.create_task(self._process(alert))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("alert processing failed", exc_info=task.exception())
        if not self._tasks and not self._pending:
            self._idle.set()
        self._wakeup.set()

    def _remember(self, key: str) -> None:
        self._done[key] = None
        self._done.move_to_end(key)
        while len(self._done) > 50_000:
            self._done.popitem(last=False)

    async def _process(self, alert: Alert) -> None:
        key = alert.dedupe_key
        if key in self._done or key in self._inflight:
            self.stats.deduped += 1
            return
        self._inflight.add(key)
        try:
            wanted = alert.channels or self.default_channels
            try:
                record: AlertRecord | None = await self.history.record(alert)
            except Exception:
                # Over-notify rather than stay silent when the history is unavailable.
                self.stats.history_errors += 1
                log.exception("cannot record alert %s; delivering without dedupe", key)
                record = None
            if record is None or record.new:
                targets = list(dict.fromkeys(wanted))
            else:
                retry = record.failed_for_good()
                targets = [c for c in dict.fromkeys(wanted) if c in retry]
            if not targets:
                self.stats.deduped += 1
                self._remember(key)
                return
            results = await asyncio.gather(*(self._deliver(alert, name) for name in targets))
            for delivery in results:
                if delivery.ok:
                    self.stats.delivered += 1
                else:
                    self.stats.failed += 1
                    log.warning("alert %s not delivered to %s after %d attempts: %s", key,
                                delivery.channel, delivery.attempts, delivery.error)
                if record is not None:
                    try:
                        await self.history.add_delivery(key, delivery)
                    except Exception:
                        self.stats.history_errors += 1
                        log.exception("cannot record the delivery of alert %s", key)
            if all(d.ok for d in results):
                self._remember(key)
        finally:
            self._inflight.discard(key)

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (1-based): exponential, half jittered."""
        delay = min(self.max_delay_s, self.base_delay_s * 2.0 ** max(0, attempt - 1))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _deliver(self, alert: Alert, name: str) -> Delivery:
        error = ""
        attempt = 0
        for attempt in range(1, self.max_attempts + 1):
            channel = self.channels.get(name)  # each attempt: a reload may replace it
            if channel is None:
                return Delivery(name, False, attempt - 1, self.clock.now(),
                                error or f"no alert channel named {name!r} is configured")
            try:
                await channel.send(alert)
                return Delivery(name, True, attempt, self.clock.now())
            except DeliveryError as exc:
                error = str(exc)
                if not exc.retryable:
                    break
            except Exception as exc:  # a channel bug must not kill the engine
                error = f"alert channel {name!r}: {type(exc).__name__}: {exc}"
            if attempt < self.max_attempts:
                await self._sleep(self.backoff(attempt))
        return Delivery(name, False, attempt, self.clock.now(), error)


# --- periodic rules ----------------------------------------------------------------------

_SCOPE_COLUMNS = {"organization": "organization", "project": "project", "team": "team",
                  "user": "user", "key": "key_id", "feature": "feature",
                  "model": "requested_model", "end_user": "end_user"}
_DIMENSION_COLUMNS = {"feature": "feature", "model": "served_model", "project": "project",
                      "user": "user", "team": "team", "organization": "organization"}


def unit_value(row: Mapping[str, Any] | None, unit: str) -> int:
    """A ``Database.usage`` row measured in a limit's unit (nano-USD for ``usd``)."""
    if row is None:
        return 0
    if unit == "usd":
        return int(row.get("cost_nano") or 0)
    if unit == "input_tokens":
        return int(row.get("input_tokens") or 0)
    if unit == "output_tokens":
        return int(row.get("output_tokens") or 0)
    if unit == "requests":
        return int(row.get("requests") or 0)
    return int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)


def _forecast(values: Mapping[date, float], period: Period, budget: float | None) -> Forecast:
    history = sorted((d, v) for d, v in values.items() if d != period.today)
    return forecast_period(history, today=period.today,
                           today_value=values.get(period.today, 0.0),
                           today_fraction=period.today_fraction,
                           period=(period.start, period.end), budget=budget)


async def month_forecast(db: Database, now: float, tz: str = "UTC", *, unit: str = "usd",
                         filters: Mapping[str, str] | None = None,
                         budget: float | None = None) -> Forecast:
    """This month's forecast for one slice of the ledger (``filters`` by ledger column):
    the dashboard's ``projected_monthly``. Reads the current and previous months' days."""
    window = Window("month", tz=tz)
    since = window_start(window, window_start(window, now) - 1)
    rows = await db.usage(UsageQuery(since=since, until=now + 1, bucket="day", tz=tz,
                                     filters=dict(filters or {}), limit=1_000))
    values = {date.fromisoformat(r["bucket"]): float(unit_value(r, unit)) for r in rows}
    return _forecast(values, month_period(now, tz), budget)


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """What the periodic rules watch; each part is off when its setting is empty.

    Buckets before the first hour with any usage are not history: a new installation's
    first busy hour is not an anomaly against a week of zeros.

    ``efficiency`` maps ``feature:<name>`` or ``model:<name>`` to the highest acceptable
    average tokens per request over the current local day. ``anomaly_by`` adds per-value
    anomaly series for ledger dimensions (``project``, ``feature``, ``model`` …) next to
    the global one.
    """

    tz: str = "UTC"
    hourly_cost_usd: float | None = None
    anomaly: AnomalySettings | None = field(default_factory=AnomalySettings)
    anomaly_units: tuple[str, ...] = ("usd", "tokens")
    anomaly_floors: Mapping[str, float] = field(default_factory=lambda: {
        "usd": float(usd_to_nano(1)), "tokens": 100_000.0})
    """Per unit (nano-USD for ``usd``): an hour below this is never an anomaly."""
    anomaly_by: tuple[str, ...] = ()
    efficiency: Mapping[str, float] = field(default_factory=dict)
    efficiency_min_requests: int = 20
    projection: bool = True
    projection_every_s: float = 900.0
    daily_summary: bool = True
    summary_top: int = 5
    channels: tuple[str, ...] = ()


class PeriodicRules:
    """The rules that look at the ledger rather than one request: anomalies, hourly cost,
    efficiency, month-end projections and the daily summary.

    ``evaluate`` runs one pass (a few grouped ledger queries) and submits what fires;
    ``run`` repeats it every ``interval_s`` until cancelled. Dedupe keys make a pass that
    repeats an alert harmless, so the interval only sets how soon news arrives.
    """

    def __init__(self, db: Database, engine: AlertEngine, limits: Sequence[Limit] = (),
                 settings: RuleSettings | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self.engine = engine
        self.limits = list(limits)
        self.settings = settings or RuleSettings()
        self.clock = clock
        self.interval_s = 60.0
        self._zone = ZoneInfo(self.settings.tz)
        self._last_projection: float | None = None
        self._summarized: str | None = None
        self._changed = asyncio.Event()

    def reconfigure(self, limits: Sequence[Limit], settings: RuleSettings,
                    interval_s: float | None = None) -> None:
        """Watch new limits and settings (a reloaded config); a new interval starts now."""
        self.limits = list(limits)
        self.settings = settings
        self._zone = ZoneInfo(settings.tz)
        if interval_s is not None and interval_s != self.interval_s:
            self.interval_s = interval_s
            self._changed.set()

    async def run(self, interval_s: float | None = None) -> None:
        if interval_s is not None:
            self.interval_s = interval_s
        while True:
            try:
                await self.evaluate()
            except Exception:
                log.exception("periodic alert rules failed; trying again in %.0fs",
                              self.interval_s)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval_s)

    async def evaluate(self) -> list[Alert]:
        now = self.clock.now()
        alerts = [*await self._hourly(now), *await self._efficiency(now),
                  *await self._projections(now), *await self._summary(now)]
        self.engine.submit_all(alerts)
        return alerts

    def _hour_key(self, t: float) -> str:
        """The label the ledger's hour buckets use for the hour containing ``t``."""
        return datetime.fromtimestamp(t, self._zone).strftime("%Y-%m-%dT%H:00")

    async def _hourly(self, now: float) -> list[Alert]:
        s = self.settings
        if s.anomaly is None and s.hourly_cost_usd is None:
            return []
        hour = Window("hour", tz=s.tz)
        start = window_start(hour, now)
        span = (s.anomaly.max_history if s.anomaly else 0) + 1
        starts = [start - k * 3600 for k in range(span, -1, -1)]  # oldest … current
        keys = [self._hour_key(t) for t in starts]
        since = starts[0]
        out: list[Alert] = []
        groups: list[tuple[str, str | None]] = [("global", None)]
        groups += [(dim, _DIMENSION_COLUMNS[dim]) for dim in s.anomaly_by
                   if dim in _DIMENSION_COLUMNS]
        for dim, column in groups:
            rows = await self.db.usage(UsageQuery(
                since=since, until=now + 1, bucket="hour", tz=s.tz,
                group_by=[column] if column else [], limit=1_000_000))
            by_subject: dict[str, dict[str, Mapping[str, Any]]] = {}
            for row in rows:
                subject = "global" if column is None else f"{dim}:{row.get(column) or '-'}"
                by_subject.setdefault(subject, {})[row["bucket"]] = row
            for subject, buckets in by_subject.items():
                if column is None and s.hourly_cost_usd is not None:
                    alert = hourly_cost_alert(
                        cost_nano=unit_value(buckets.get(keys[-1]), "usd"),
                        threshold_nano=usd_to_nano(s.hourly_cost_usd),
                        hour_label=window_label(hour, now), now=now, channels=s.channels)
                    if alert is not None:
                        out.append(alert)
                if s.anomaly is None:
                    continue
                first = next((i for i, k in enumerate(keys) if k in buckets), len(keys))
                for unit in s.anomaly_units:
                    series = [float(unit_value(buckets.get(k), unit)) for k in keys]
                    settings = replace(s.anomaly, floor=max(
                        s.anomaly.floor, s.anomaly_floors.get(unit, 0.0)))
                    # The hour just completed, and the current one so far: a runaway shows
                    # before its hour ends, and both share the hour's dedupe key.
                    for end, t in ((len(series) - 1, starts[-2]), (len(series), starts[-1])):
                        alert = anomaly_alert(
                            subject=subject, unit=unit, baseline=series[first:end - 1],
                            value=series[end - 1], bucket_label=window_label(hour, t),
                            now=now, settings=settings, channels=s.channels)
                        if alert is not None:
                            out.append(alert)
        return out

    async def _efficiency(self, now: float) -> list[Alert]:
        s = self.settings
        if not s.efficiency:
            return []
        day = Window("day", tz=s.tz)
        label = window_label(day, now)
        wanted: dict[str, dict[str, float]] = {}
        for key, level in s.efficiency.items():
            dim, _, name = key.partition(":")
            if dim in _DIMENSION_COLUMNS and name:
                wanted.setdefault(dim, {})[name] = level
        out: list[Alert] = []
        for dim, names in wanted.items():
            column = _DIMENSION_COLUMNS[dim]
            rows = await self.db.usage(UsageQuery(
                since=window_start(day, now), until=now + 1, group_by=[column],
                limit=1_000_000))
            for row in rows:
                value = row.get(column)
                if value is None or str(value) not in names:
                    continue
                alert = efficiency_alert(
                    dimension=dim, name=str(value), tokens=unit_value(row, "tokens"),
                    requests=int(row["requests"]), max_average=names[str(value)],
                    window_label=label, now=now, min_requests=s.efficiency_min_requests,
                    channels=s.channels)
                if alert is not None:
                    out.append(alert)
        return out

    async def _projections(self, now: float) -> list[Alert]:
        s = self.settings
        mono = self.clock.monotonic()
        if not s.projection or (self._last_projection is not None
                                and mono - self._last_projection < s.projection_every_s):
            return []
        self._last_projection = mono
        out: list[Alert] = []
        for limit in self.limits:
            if limit.window.kind != "month" or limit.when or (
                    limit.scope != "global" and limit.scope not in _SCOPE_COLUMNS):
                continue
            out.extend(await self._project(limit, now))
        return out

    async def _project(self, limit: Limit, now: float) -> list[Alert]:
        tz = limit.window.tz
        period = month_period(now, tz)
        month_start = window_start(limit.window, now)
        since = window_start(limit.window, month_start - 1)
        column = _SCOPE_COLUMNS.get(limit.scope)
        rows = await self.db.usage(UsageQuery(
            since=since, until=now + 1, bucket="day", tz=tz,
            group_by=[column] if column else [], limit=1_000_000))
        series: dict[str, dict[date, float]] = {}
        for row in rows:
            scope_id = "global" if column is None else row.get(column)
            if scope_id is None or (limit.match is not None and scope_id not in limit.match):
                continue
            day = date.fromisoformat(row["bucket"])
            series.setdefault(str(scope_id), {})[day] = float(unit_value(row, limit.unit))
        budget = limit.amount_at(now)
        label = window_label(limit.window, now)
        out: list[Alert] = []
        for scope_id, values in series.items():
            forecast = _forecast(values, period, budget)
            alert = projection_alert(
                limit_name=limit.name, scope=limit.scope, scope_id=scope_id, unit=limit.unit,
                budget=budget, forecast=forecast, label=label, now=now,
                channels=self.settings.channels)
            if alert is not None:
                out.append(alert)
        return out

    async def _summary(self, now: float) -> list[Alert]:
        s = self.settings
        if not s.daily_summary:
            return []
        day = Window("day", tz=s.tz)
        today_start = window_start(day, now)
        yesterday_start = window_start(day, today_start - 1)
        label = datetime.fromtimestamp(yesterday_start, self._zone).date().isoformat()
        key = f"daily_summary:{label}"
        if self._summarized == label:
            return []
        self._summarized = label
        try:
            if await self.engine.history.get(key) is not None:
                return []
        except Exception:
            log.exception("cannot read the alert history")

        async def usage(*group_by: str) -> list[dict[str, Any]]:
            return await self.db.usage(UsageQuery(
                since=yesterday_start, until=today_start, group_by=group_by, tz=s.tz,
                limit=s.summary_top if group_by else 1))

        totals = await usage()
        if not totals:
            return []
        summary = SummaryInput(totals[0], await usage("project"), await usage("served_model"),
                               await usage("user"))
        return [daily_summary(summary, day_label=label, now=now, top=s.summary_top,
                              channels=s.channels)]
