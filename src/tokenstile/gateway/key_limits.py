"""Limits a key carries itself (``KeyRecord.limits``, set through the admin API), enforced
like any configured limit of scope ``key``.

Each gateway reads them from the database every ``refresh_s`` (one second), like runtime
overrides, so a key created or changed anywhere is held to its limits everywhere within
that time. They are named ``keys.<key id>.<name>``, so an amount override can target them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tokenstile.limits.model import Limit, parse_window
from tokenstile.stores.database import Database
from tokenstile.types import UNITS, usd_to_nano

log = logging.getLogger("tokenstile.key_limits")

PREFIX = "keys."


def is_key_limit(limit: Limit) -> bool:
    return limit.scope == "key" and limit.name.startswith(PREFIX)


def compile_key_limits(items: list[tuple[str, dict[str, Any]]], tz: str) -> list[Limit]:
    """One ``Limit`` per entry of each key's ``limits``; malformed entries are skipped."""
    out = []
    for key_id, spec in items:
        if not isinstance(spec, dict):
            continue
        for name, item in sorted(spec.items()):
            try:
                unit = item.get("unit", "tokens")
                if unit not in UNITS or item["window"] == "request":
                    raise ValueError(unit)
                amount = item["amount"]
                rollover = item.get("rollover") or {}
                percent = float(rollover.get("max_percent", 0)) if rollover else 0.0
                prorate = bool(item.get("prorate", False))
                if (percent or prorate) and str(item["window"]).startswith("rolling"):
                    raise ValueError(item["window"])
                out.append(Limit(
                    name=f"{PREFIX}{key_id}.{name}", scope="key",
                    window=parse_window(str(item["window"]), tz), unit=unit,
                    amount=usd_to_nano(amount) if unit == "usd" else int(amount),
                    match=frozenset({key_id}), shadow=bool(item.get("shadow", False)),
                    origin=f"key {key_id}", rollover_percent=percent, prorate=prorate))
            except (AttributeError, KeyError, TypeError, ValueError):
                log.warning("skipping malformed limit %r of key %s", name, key_id)
    return out


class KeyLimits:
    """The current key limits of every unrevoked key, refreshed from the database."""

    def __init__(self, db: Database, refresh_s: float = 1.0) -> None:
        self._db = db
        self.refresh_s = refresh_s
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.listeners: list[Callable[[], None]] = []

    async def refresh(self) -> bool:
        items = await self._db.key_limits()
        if items == self.items:
            return False
        self.items = items
        for listener in self.listeners:
            listener()
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:
                log.warning("could not refresh key limits", exc_info=True)
