"""``memory://``: alert history private to one process (tests)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from tokenstile.alerts.rules import Alert
from tokenstile.stores.alerts import AlertRecord, Delivery, json_data, new_alert_id
from tokenstile.stores.urls import StoreConfigError, url_options


class MemoryAlertHistory:
    """A dict by dedupe key, bounded to the newest ``max_records``."""

    def __init__(self, url: str = "memory://", *, max_records: int = 10_000) -> None:
        if url.split("?", 1)[0] != "memory://":
            raise StoreConfigError(f"an in-memory alert history URL is 'memory://', not {url!r}")
        url_options(url, (), "alert history")
        self.url = url
        self._records: OrderedDict[str, AlertRecord] = OrderedDict()
        self._max = max_records

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def record(self, alert: Alert) -> AlertRecord:
        found = self._records.get(alert.dedupe_key)
        if found is not None:
            return AlertRecord(found.id, found.alert, list(found.deliveries), new=False)
        kept = replace(alert, data=json_data(alert))
        stored = AlertRecord(new_alert_id(), kept, [], new=True)
        self._records[alert.dedupe_key] = stored
        while len(self._records) > self._max:
            self._records.popitem(last=False)
        return AlertRecord(stored.id, kept, [], new=True)

    async def add_delivery(self, dedupe_key: str, delivery: Delivery) -> None:
        found = self._records.get(dedupe_key)
        if found is not None:
            found.deliveries.append(delivery)

    async def get(self, dedupe_key: str) -> AlertRecord | None:
        found = self._records.get(dedupe_key)
        return None if found is None else AlertRecord(found.id, found.alert,
                                                      list(found.deliveries))

    async def recent(self, limit: int = 50, since: float | None = None) -> list[AlertRecord]:
        items = [r for r in self._records.values() if since is None or r.alert.ts >= since]
        items.sort(key=lambda r: r.alert.ts, reverse=True)
        return [AlertRecord(r.id, r.alert, list(r.deliveries)) for r in items[:limit]]

    async def prune(self, before: float) -> int:
        old = [key for key, r in self._records.items() if r.alert.ts < before]
        for key in old:
            del self._records[key]
        return len(old)
