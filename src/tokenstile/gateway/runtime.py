"""The process-wide services one gateway needs, built from a Config and torn down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenstile.alerts.channels import Channel, LogChannel, build_channel
from tokenstile.alerts.engine import AlertEngine, PeriodicRules, RuleSettings
from tokenstile.alerts.rules import AnomalySettings, limit_blocked_alert
from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.config import Config, referenced_channels
from tokenstile.degrade.stage import Degrader
from tokenstile.gateway.auth import Authenticator
from tokenstile.gateway.background import BackgroundResponses
from tokenstile.gateway.batches import Batches
from tokenstile.gateway.caching import CacheStage
from tokenstile.gateway.key_limits import KeyLimits, compile_key_limits, is_key_limit
from tokenstile.gateway.reload import ConfigReloader, keep_start_settings, restart_only_changes
from tokenstile.gateway.resilience import CircuitBreakers
from tokenstile.gateway.routing import Router
from tokenstile.gateway.upstream import UpstreamClient
from tokenstile.ledger import LedgerWriter
from tokenstile.limits.admission import Admission
from tokenstile.limits.model import Limit
from tokenstile.limits.overrides import Overrides
from tokenstile.media import priced_apart
from tokenstile.metrics import Metrics
from tokenstile.observability import Telemetry
from tokenstile.policies.engine import PolicyEngine
from tokenstile.policies.moderation import UpstreamModerator
from tokenstile.price_table import pricer_from_config
from tokenstile.price_watch import watch_prices
from tokenstile.prices import Pricer
from tokenstile.providers.anthropic import AnthropicAdapter
from tokenstile.providers.bedrock import BedrockAdapter
from tokenstile.providers.gemini import GeminiAdapter
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.stores.alerts import history_from_url
from tokenstile.stores.counters import CounterStore, StoreUnavailable, counter_store_from_url
from tokenstile.stores.database import Database, database_from_url
from tokenstile.stores.spool import LedgerSpool
from tokenstile.tokens import encoding_for, ensure_offline_encodings
from tokenstile.types import LedgerRow, usd_to_nano

if TYPE_CHECKING:
    from tokenstile.providers.base import Adapter
    from tokenstile.types import WireFormat

log = logging.getLogger("tokenstile")


@dataclass
class Runtime:
    config: Config
    clock: Clock
    db: Database
    counters: CounterStore
    auth: Authenticator
    router: Router
    upstream: UpstreamClient
    ledger: LedgerWriter
    pricer: Pricer
    metrics: Metrics
    policies: PolicyEngine
    admission: Admission
    overrides: Overrides
    breakers: CircuitBreakers
    degrader: Degrader
    alerts: AlertEngine
    caching: CacheStage
    adapters: dict[WireFormat, Adapter] = field(default_factory=dict)
    started: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    config_path: str | None = None
    # Set for a served worker (``create_app_from_env``): see ``tune_gc_for_serving``.
    tune_gc: bool = False
    reloader: ConfigReloader | None = None
    key_limits: KeyLimits | None = None
    telemetry: Telemetry = field(default_factory=lambda: Telemetry(SYSTEM_CLOCK))
    background: BackgroundResponses = field(init=False, repr=False, compare=False)
    batches: Batches = field(init=False, repr=False, compare=False)
    periodic: PeriodicRules = field(init=False, repr=False, compare=False)
    # The services of the current config, fixed for the requests that start under it.
    view: Runtime = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._pin()

    def _pin(self) -> None:
        view = copy.copy(self)
        view.view = view
        self.view = view

    @classmethod
    def build(cls, config: Config, clock: Clock = SYSTEM_CLOCK,
              db: Database | None = None, counters: CounterStore | None = None) -> Runtime:
        ensure_offline_encodings()
        db = db or database_from_url(config.storage.database)
        counters = counters or counter_store_from_url(config.storage.counters, clock=clock)
        pricer = pricer_from_config(config)
        router = Router(config)
        metrics = Metrics(model_labels_for(config, pricer))
        adapters: dict[WireFormat, Adapter] = {"openai": OpenAIAdapter(),
                                               "anthropic": AnthropicAdapter(),
                                               "bedrock": BedrockAdapter(),
                                               "gemini": GeminiAdapter()}
        alerts = alert_engine_for(config, clock)

        def alert_blocked(limit: Limit, scope_id: str, used: int, needed: int) -> None:
            alerts.submit(limit_blocked_alert(limit, scope_id, used, needed, clock.now()))

        admission = Admission(config, counters, pricer, clock, on_blocked=alert_blocked,
                              on_store_error=lambda _: metrics.store_error("counters"))
        overrides = Overrides(db, config)
        overrides.listeners.append(admission.apply_overrides)
        upstream = UpstreamClient()
        runtime = cls(
            config=config, clock=clock, db=db, counters=counters,
            auth=Authenticator(config.auth, db, clock, admin_key_for(config)),
            router=router, upstream=upstream,
            ledger=LedgerWriter(db, spool=LedgerSpool.for_database(db.url,
                                                                   config.storage.spool_dir),
                                clock=clock),
            pricer=pricer, metrics=metrics,
            policies=PolicyEngine(config, UpstreamModerator(router, upstream), overrides),
            admission=admission, overrides=overrides, adapters=adapters,
            breakers=CircuitBreakers(config.resilience.circuit_breaker, clock),
            degrader=Degrader(config, admission, clock),
            alerts=alerts,
            caching=CacheStage(config, clock),
            telemetry=Telemetry.from_env(clock),
        )
        runtime.background = BackgroundResponses(config, pricer, clock, db, runtime.ledger,
                                                 metrics, upstream, admission)
        runtime.batches = Batches(config, pricer, adapters["openai"], runtime.background,
                                  upstream)
        runtime.periodic = PeriodicRules(db, alerts, admission.limits, rule_settings(config),
                                         clock)
        runtime.periodic.interval_s = config.alerting.interval_s
        runtime._pin()
        return runtime

    async def start(self) -> None:
        """Open the stores, charge reservations a dead gateway left behind, start upkeep."""
        self.loop = asyncio.get_running_loop()
        await self.db.open()
        self.ledger.start()
        await self.overrides.refresh()
        await self.alerts.start()
        self.periodic.limits = list(self.admission.limits)
        self._tasks.append(asyncio.create_task(self.periodic.run(),
                                               name="tokenstile-alert-rules"))
        self._tasks.append(asyncio.create_task(self.overrides.run(), name="tokenstile-overrides"))
        self.key_limits = KeyLimits(self.db)
        self.key_limits.listeners.append(self._apply_key_limits)
        await self.key_limits.refresh()
        self._tasks.append(asyncio.create_task(self.key_limits.run(),
                                               name="tokenstile-key-limits"))
        self.reloader = ConfigReloader(self.reconfigure, self.clock, self.config_path,
                                       on_reloaded=lambda: watch_prices(self.config, self.clock,
                                                                           self.alerts))
        if self.config_path:
            self.reloader.install_signal_handler()
            self._tasks.append(asyncio.create_task(self.reloader.watch(),
                                                   name="tokenstile-config-watch"))
        self._tasks.append(asyncio.create_task(self.background.run(),
                                               name="tokenstile-background-responses"))
        try:
            recovered = await self.admission.leases.recover(self.charge_expired)
            if recovered:
                log.warning("charged %d unsettled reservations at their estimate", recovered)
        except StoreUnavailable:
            log.warning("counter store unreachable at start; recovery will retry")
        self._tasks.append(asyncio.create_task(self.admission.leases.maintain(self.charge_expired),
                                               name="tokenstile-leases"))
        # The tokenizer and the price table load in a thread while the gateway serves; a
        # request that needs them first waits for them in a thread of its own. (Begun
        # after the steps above, which would otherwise wait for the GIL behind it.)
        self._tasks.append(asyncio.create_task(warm_up_in_thread(self.tune_gc),
                                               name="tokenstile-warm-up"))
        self.started = True
        self._pin()  # the view requests hold: what start() set up

    async def stop(self) -> None:
        """Finish the ledger first (nothing is lost on a clean shutdown), then close."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.reloader is not None:
            self.reloader.remove_signal_handler()
        await self.background.close()
        await self.ledger.close()
        await self.alerts.close(5.0)
        await self.caching.close()
        await self.upstream.close()
        await self.counters.close()
        await self.db.close()
        await asyncio.to_thread(self.telemetry.close)
        self.started = False

    def reconfigure(self, config: Config) -> list[str]:
        """Apply a validated config to the running services, keeping counters, reservations,
        connections and caches; return the start-time settings that wait for a restart.

        Requests already running keep the view they started with (``view``).
        """
        pending = restart_only_changes(self.config, config)
        config = keep_start_settings(self.config, config)
        pricer = pricer_from_config(config)
        self.auth.reconfigure(config.auth, admin_key_for(config))
        self.admission.reconfigure(config, pricer)
        self.background.reconfigure(config, pricer)
        self.batches.reconfigure(config, pricer)
        self.overrides.reconfigure(config)
        self.breakers.config = config.resilience.circuit_breaker
        self.degrader.reconfigure(config)
        self.caching.reconfigure(config)
        self.metrics.set_model_known(model_labels_for(config, pricer))
        self.alerts.reconfigure(*alert_channels_for(config))
        self.config, self.pricer = config, pricer
        self._apply_key_limits()
        self.periodic.reconfigure(self.admission.limits, rule_settings(config),
                                  config.alerting.interval_s)
        self.router = Router(config)
        self.policies = PolicyEngine(config, UpstreamModerator(self.router, self.upstream),
                                     self.overrides)
        self._pin()
        return pending

    def charge_expired(self, row: LedgerRow) -> None:
        """A reservation whose gateway died, charged at its estimate: its row, unless it
        is a background response's, which is billed when the response ends."""
        if row.detail.get("background") is True:
            self.background.expired(row)
        else:
            self.ledger.submit(row)

    def _apply_key_limits(self) -> None:
        """The limits keys carry join the config's (again after each reload)."""
        items = self.key_limits.items if self.key_limits is not None else []
        base = [limit for limit in self.admission.base_limits if not is_key_limit(limit)]
        extra = compile_key_limits(items, self.config.server.timezone)
        if extra or len(base) != len(self.admission.base_limits):
            self.admission.base_limits = [*base, *extra]
            self.admission.apply_overrides(self.overrides.items)
            self.periodic.limits = list(self.admission.limits)

    def config_status(self) -> dict[str, object]:
        """The config's source, generation and last reload error (for /readyz)."""
        if self.reloader is None:
            return {"status": "ok", "source": self.config_path, "generation": 1}
        return self.reloader.status.as_dict()


def alert_channels_for(config: Config) -> tuple[dict[str, Channel], list[str] | None]:
    """Channels from ``alerting.channels`` (names used but not defined go to the log) and
    the default ones."""
    channels: dict[str, Channel] = {
        name: build_channel(name, spec.model_dump(exclude_none=True))
        for name, spec in config.alerting.channels.items()}
    for name in referenced_channels(config):
        channels.setdefault(name, LogChannel())
    if not channels:
        channels["log"] = LogChannel()
    return channels, config.alerting.default_channels


def alert_engine_for(config: Config, clock: Clock) -> AlertEngine:
    channels, default_channels = alert_channels_for(config)
    history = history_from_url(config.storage.database)
    return AlertEngine(channels, history, clock, default_channels=default_channels)


def model_labels_for(config: Config, pricer: Pricer) -> Callable[[str], bool]:
    """The models that get a metric label of their own: routed by name, or priced."""
    exact_routes = {r.match for r in config.routes}
    return lambda model: model in exact_routes or pricer.known(model) or \
        priced_apart(pricer, model)


def rule_settings(config: Config) -> RuleSettings:
    alerting = config.alerting
    return RuleSettings(
        tz=config.server.timezone,
        hourly_cost_usd=alerting.hourly_cost_usd,
        anomaly=AnomalySettings() if alerting.anomaly else None,
        anomaly_by=tuple(alerting.anomaly_by),
        anomaly_floors={"usd": float(usd_to_nano(alerting.anomaly_floor_usd)),
                        "tokens": float(alerting.anomaly_floor_tokens)},
        efficiency=dict(alerting.efficiency),
        projection=alerting.projection,
        daily_summary=alerting.daily_summary,
    )


def admin_key_for(config: Config) -> str | None:
    """The admin key: ``server.admin_key``, else ``$TOKENSTILE_ADMIN_KEY``."""
    return config.server.admin_key or os.environ.get("TOKENSTILE_ADMIN_KEY") or None


def warm_up() -> None:
    """Load the tokenizer most models count with (o200k) and the price table now, not
    inside the first request. Older models' cl100k loads when one is first asked for."""
    encoding_for("gpt-4o").encode_ordinary("warm up")
    Pricer().known("gpt-4o")


# The youngest generation is collected once this many more container objects were created
# than freed (CPython's default is 700). The objects of the requests in flight keep that
# count up: at 50 concurrent requests the default ran ~150 collections a second, which with
# the middle generation's took 8% of a worker's time, and found no garbage (the request
# path leaves none in cycles: over 15 s at full load the one collection this threshold let
# run found none). Garbage in cycles, should some appear, waits for a few MB at most.
YOUNG_COLLECTION_THRESHOLD = 10_000


def tune_gc_for_serving() -> None:
    """For a served worker, once its startup is done: collect once, then move every object
    alive now (modules, configuration, the price table) to the collector's permanent
    generation, so that a full collection walks only what requests created since (it
    walked the ~90,000 objects of startup: a pause of the event loop of about 60 ms every
    second or so at full load); and collect the youngest generation less often
    (``YOUNG_COLLECTION_THRESHOLD``). The one collection here is that pause, once."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)


async def warm_up_in_thread(tune_gc: bool = False) -> None:
    """``warm_up`` in a thread; then, with ``tune_gc``, ``tune_gc_for_serving``."""
    try:
        await asyncio.to_thread(warm_up)
    except Exception:  # the first request that counts tokens meets the same error, clearly
        log.exception("tokenstile: loading the tokenizer and the price table failed")
    if tune_gc:
        tune_gc_for_serving()

