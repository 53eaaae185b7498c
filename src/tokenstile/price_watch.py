"""An alert when a routed model's price changes.

At start and after each config reload, the price every routed model is billed at now (the
configuration's overrides and adjustments over the installed genai-prices table) is compared
with the price recorded for it last time, in the database: a model whose price differs
raises one ``price_change`` alert, and the new prices are recorded. A new genai-prices
version, an edited ``prices:`` entry, a new adjustment or a version whose date came all show
up this way. A model seen for the first time is only recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence

from tokenstile.alerts.engine import AlertEngine
from tokenstile.alerts.rules import Alert
from tokenstile.clock import Clock
from tokenstile.config import Config
from tokenstile.price_table import fingerprint, genai_prices_version
from tokenstile.routed import routed_prices
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.records import PriceRecord, RecordStore, record_store_from_url

log = logging.getLogger("tokenstile.prices")


def price_change_alerts(before: Sequence[PriceRecord], now: Sequence[PriceRecord],
                        ts: float, channels: Sequence[str] = ()) -> list[Alert]:
    """One alert per (model, provider) whose recorded price differs (pure)."""
    old = {(r.model, r.provider): r for r in before}
    alerts = []
    for record in now:
        previous = old.get((record.model, record.provider))
        if previous is None or previous.fingerprint == record.fingerprint:
            continue
        digest = hashlib.sha256(f"{previous.fingerprint}>{record.fingerprint}".encode()) \
            .hexdigest()[:12]
        who = f"{record.model} ({record.provider or 'unknown provider'})"
        alerts.append(Alert(
            kind="price_change", severity="warning", title=f"The price of {who} changed",
            message=(f"{who} is now billed at {record.fingerprint} (USD per million "
                     f"tokens), was {previous.fingerprint}. Calls from now on are priced at "
                     "the new price; ledger rows already written keep theirs. "
                     f"(genai-prices {genai_prices_version()}; `tokenstile prices show "
                     f"{record.model}` lists the versions.)"),
            dedupe_key=f"price_change:{record.provider}:{record.model}:{digest}",
            data={"model": record.model, "provider": record.provider,
                  "before": previous.fingerprint, "after": record.fingerprint},
            ts=ts, channels=tuple(channels)))
    return alerts


def current_prices(config: Config, now: float) -> list[PriceRecord]:
    return [PriceRecord(d.model, d.provider or "", fingerprint(d.configured), now)
            for d in routed_prices(config, at=now)]


async def check_prices(config: Config, store: RecordStore, now: float) -> list[Alert]:
    """Compare with the recorded prices, record the current ones, return the alerts."""
    current = current_prices(config, now)
    alerts = price_change_alerts(await store.prices(), current, now,
                                 config.alerting.default_channels or ())
    await store.save_prices(current)
    return alerts


async def _check(config: Config, now: float) -> list[Alert]:
    store = record_store_from_url(config.storage.database)
    await store.open()
    try:
        return await check_prices(config, store, now)
    finally:
        await store.close()


async def watch_prices(config: Config, clock: Clock, alerts: AlertEngine,
                       timeout_s: float = 5.0) -> int:
    """``check_prices`` for a running gateway, alerts through its engine. Never raises and
    never holds a start or a reload up for more than ``timeout_s`` (a database that is down
    is the outage handling's business, not this check's)."""
    try:
        raised = await asyncio.wait_for(_check(config, clock.now()), timeout_s)
    except (StoreUnavailable, OSError, ValueError, TimeoutError) as exc:
        log.warning("routed models' prices not checked: %s", exc or type(exc).__name__)
        return 0
    except Exception:  # a bug here must not stop a gateway from starting
        log.exception("routed models' prices not checked")
        return 0
    for alert in raised:
        alerts.submit(alert)
    return len(raised)
