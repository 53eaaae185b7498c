"""The alert history: what was sent, to which channels, and the dedupe keys already seen.

Chosen by the database URL (``sqlite:///path``, ``postgresql://…``; ``memory://`` for one
process), so every gateway sharing a database deduplicates alerts together: the first
process to record a key delivers it, later ones see it as known. The history holds an
alert's ``data`` as JSON (values JSON cannot hold are kept as their text).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from tokenstile.alerts.rules import SEVERITIES, Alert, Severity
from tokenstile.stores.urls import backend_class

ALERT_COLUMNS = "id, ts, kind, severity, title, message, dedupe_key, data, deliveries"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of delivering one alert to one channel, after all its attempts."""

    channel: str
    ok: bool
    attempts: int
    ts: float
    error: str | None = None


@dataclass(slots=True)
class AlertRecord:
    """An alert as the history holds it, with every delivery made for its key."""

    id: str
    alert: Alert
    deliveries: list[Delivery] = field(default_factory=list)
    new: bool = False
    """True when this call recorded the key for the first time."""

    def delivered_to(self) -> set[str]:
        return {d.channel for d in self.deliveries if d.ok}

    def failed_for_good(self) -> set[str]:
        return {d.channel for d in self.deliveries if not d.ok} - self.delivered_to()

    def to_dict(self) -> dict[str, Any]:
        out = self.alert.to_dict()
        out.pop("channels", None)
        out["id"] = self.id
        out["deliveries"] = [asdict(d) for d in self.deliveries]
        return out


class AlertHistory(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def record(self, alert: Alert) -> AlertRecord:
        """Store the alert unless its dedupe key is known; return what is stored."""
        ...

    async def add_delivery(self, dedupe_key: str, delivery: Delivery) -> None: ...

    async def get(self, dedupe_key: str) -> AlertRecord | None: ...

    async def recent(self, limit: int = 50, since: float | None = None) -> list[AlertRecord]:
        """Newest first, for the admin API and the dashboard."""
        ...

    async def prune(self, before: float) -> int:
        """Forget alerts older than ``before``; their keys may then fire again."""
        ...


def new_alert_id() -> str:
    return "alr_" + secrets.token_hex(10)


def json_data(alert: Alert) -> dict[str, Any]:
    """The alert's data as the history keeps it."""
    data: dict[str, Any] = orjson.loads(orjson.dumps(alert.data, default=str))
    return data


def _severity(value: str) -> Severity:
    for s in SEVERITIES:
        if s == value:
            return s
    return "warning"


def record_from_row(row: Iterable[Any], new: bool = False) -> AlertRecord:
    """A row of ``ALERT_COLUMNS`` (``data`` and ``deliveries`` as JSON text)."""
    id_, ts, kind, severity, title, message, key, data, deliveries = row
    alert = Alert(kind=kind, severity=_severity(severity), title=title, message=message,
                  dedupe_key=key, data=orjson.loads(data) if data else {}, ts=ts)
    return AlertRecord(id_, alert, [Delivery(**d) for d in orjson.loads(deliveries or "[]")],
                       new=new)


def history_from_url(url: str) -> AlertHistory:
    """``sqlite:///path``, ``postgresql://…`` (the ledger's database) or ``memory://``."""
    history: AlertHistory = backend_class("alert history", url)(url)
    return history
