"""One reconciliation: read a provider's reports, sum the ledger in SQL, compare, store the
run, and alert when the drift passes the configured thresholds."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.config import Config, ReconcileProviderConfig
from tokenstile.reconcile.compare import compare, drift_alert, over_threshold, totals
from tokenstile.reconcile.reports import ProviderDay, ReconcileError, fetch_days
from tokenstile.stores.records import ReconcileRun, RecordStore

Fetch = Callable[[str, ReconcileProviderConfig, float, float], Awaitable[list[ProviderDay]]]


def provider_settings(config: Config, provider: str) -> ReconcileProviderConfig:
    cfg = getattr(config.reconcile, provider, None)
    if cfg is None or not cfg.admin_key:
        raise ReconcileError(
            f"no admin key for {provider}: set reconcile.{provider}.admin_key in the config "
            f"(e.g. ${{{provider.upper()}_ADMIN_KEY}}); the provider's reports need an admin "
            "key, not an API key")
    return cfg  # type: ignore[no-any-return]


def ledger_upstreams(config: Config, provider: str,
                     cfg: ReconcileProviderConfig) -> list[str]:
    """The upstreams whose calls the provider served: those configured, else every
    upstream of that kind or provider."""
    if cfg.upstreams is not None:
        return list(cfg.upstreams)
    return [name for name, up in config.upstreams.items()
            if (up.provider or up.kind).lower() == provider]


def day_window(since: float, until: float) -> tuple[float, float]:
    """Whole UTC days: from the start of ``since``'s day to the end of ``until``'s."""
    start = math.floor(since / 86400) * 86400
    end = math.ceil(until / 86400) * 86400
    return float(start), float(max(end, start + 86400))


async def reconcile(config: Config, provider: str, since: float, until: float,
                    store: RecordStore, *, clock: Clock = SYSTEM_CLOCK,
                    fetch: Fetch = fetch_days) -> tuple[ReconcileRun, list[dict[str, object]]]:
    """Run one reconciliation and store it; return the run and its rows over threshold."""
    cfg = provider_settings(config, provider)
    start, end = day_window(since, until)
    provider_days = await fetch(provider, cfg, start, end)
    ledger_days = await store.ledger_days(start, end, ledger_upstreams(config, provider, cfg))
    run = ReconcileRun(provider=provider, since=start, until=end, ts=clock.now(),
                       rows=compare(ledger_days, provider_days))
    totals(run)
    over = [r for r in run.rows if over_threshold(r, config.reconcile.alert_above_usd,
                                                 config.reconcile.alert_above_percent)]
    run.alerted = bool(over)
    await store.save_run(run)
    return run, over


async def send_alert(config: Config, run: ReconcileRun, over: Sequence[dict[str, object]],
                     clock: Clock = SYSTEM_CLOCK) -> bool:
    """Deliver the drift alert through the configured channels (and the alert history);
    True when it was sent, False when there was none or the same drift was already
    alerted (the history deduplicates it)."""
    from tokenstile.gateway.runtime import alert_engine_for

    alert = drift_alert(run, list(over), config.reconcile.channels)  # type: ignore[arg-type]
    if alert is None:
        return False
    engine = alert_engine_for(config, clock)
    await engine.start()
    try:
        engine.submit(alert)
        await engine.flush()
    finally:
        await engine.close()
    return engine.stats.deduped == 0
