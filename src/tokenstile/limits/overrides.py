"""Runtime overrides: kill switches, budget amounts and shadow mode, changed without a restart.

They live in the database, so every gateway process sees the same ones; each process keeps
a snapshot that it refreshes every ``refresh_s`` (one second), so a switch flipped from the
CLI, the admin API or the dashboard takes effect everywhere within that time. The request
path only reads the snapshot: no I/O per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from tokenstile.config import Config
from tokenstile.errors import GatewayError
from tokenstile.limits.model import Limit
from tokenstile.stores.database import Database, Override

if TYPE_CHECKING:
    from tokenstile.types import RequestContext

log = logging.getLogger("tokenstile.overrides")

SWITCH_SCOPES = ("feature", "project", "key", "model")


class SwitchedOff(GatewayError):
    def __init__(self, scope: str, name: str, reason: str | None, source: str) -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(
            403, f"{scope} {name!r} is switched off{why}; requests to it are refused until "
                 f"it is switched back on ({source})",
            type="permission_error", code=f"{scope}_disabled")


def switch_target(scope: str, name: str) -> str:
    if scope not in SWITCH_SCOPES:
        raise ValueError(f"cannot switch a {scope!r}; expected one of {', '.join(SWITCH_SCOPES)}")
    return f"{scope}:{name}"


def apply_limit_overrides(limits: Iterable[Limit], overrides: Iterable[Override]) -> list[Limit]:
    """The limits with runtime amounts and shadow flags replacing the file's values."""
    amounts = {o.target: o.value.get("amount") for o in overrides if o.kind == "limit"}
    shadows = {o.target: o.value.get("shadow") for o in overrides if o.kind == "shadow"}
    out = []
    for limit in limits:
        amount = amounts.get(limit.name)
        shadow = shadows.get(limit.name)
        if isinstance(amount, int | float) and not isinstance(amount, bool):
            limit = replace(limit, amount=int(amount), schedule=())
        if isinstance(shadow, bool):
            limit = replace(limit, shadow=shadow)
        out.append(limit)
    return out


class Overrides:
    def __init__(self, db: Database, config: Config, refresh_s: float = 1.0) -> None:
        self._db = db
        self.refresh_s = refresh_s
        self.items: list[Override] = []
        self._switched_off: dict[str, tuple[str | None, str]] = {}
        self.listeners: list[Callable[[list[Override]], None]] = []
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self._config_off: dict[str, tuple[str | None, str]] = {}
        for name, project in config.projects.items():
            if not project.enabled:
                self._config_off[f"project:{name}"] = (None, "config file")
        for name, feature in config.features.items():
            if not feature.enabled:
                self._config_off[f"feature:{name}"] = (None, "config file")
        self._rebuild()

    def _rebuild(self) -> None:
        off = dict(self._config_off)
        for item in self.items:
            if item.kind != "switch":
                continue
            if item.value.get("enabled") is False:
                off[item.target] = (item.value.get("reason"), "runtime switch")
            elif item.value.get("enabled") is True:
                off.pop(item.target, None)
        self._switched_off = off

    async def refresh(self) -> bool:
        """Reload from the database; True when something changed."""
        items = await self._db.list_overrides()
        if items == self.items:
            return False
        self.items = items
        self._rebuild()
        for listener in self.listeners:
            listener(items)
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.warning("could not refresh runtime overrides", exc_info=True)
            await asyncio.sleep(self.refresh_s)

    def check(self, ctx: RequestContext) -> None:
        """Refuse a request whose feature, project, key or model is switched off."""
        if not self._switched_off:
            return
        caller, req = ctx.caller, ctx.req
        for scope, name in (("feature", req.feature), ("project", caller.project),
                            ("key", caller.key_id), ("model", req.model)):
            if name is None:
                continue
            found = self._switched_off.get(f"{scope}:{name}")
            if found is not None:
                ctx.block_reason = f"switched_off:{scope}"
                raise SwitchedOff(scope, name, found[0], found[1])

    def is_off(self, scope: str, name: str) -> bool:
        return f"{scope}:{name}" in self._switched_off

