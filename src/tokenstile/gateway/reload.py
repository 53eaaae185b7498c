"""Hot reload: a changed config file (or SIGHUP) is validated, then applied without a restart.

A config that does not validate is refused: the running one keeps serving, and the error is
logged and reported by ``/readyz`` and ``/admin/status``. Every other setting applies at
once (``RELOADED`` says who applies each) except those that only take effect when the
process starts (listen addresses, workers, store URLs, the spool directory,
``RESTART_ONLY``): they keep their running values and are reported as waiting for a
restart. The file is polled (its size, mtime and inode)
once a second, which also catches editors that replace the file instead of writing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenstile.clock import Clock
from tokenstile.config import Config, ConfigError, load_config

log = logging.getLogger("tokenstile.reload")

# Settings read once at start: a reload keeps their running values and reports them as
# waiting for a restart (``/readyz``, ``/admin/status``, ``tokenstile check``).
RESTART_ONLY = {
    "server": ("host", "port", "workers", "admin_host", "admin_port"),
    "storage": ("counters", "database", "spool_dir"),
}

# Everything else applies on a reload; this says who applies each section
# (``Runtime.reconfigure``). A test keeps it complete: every setting of ``Config`` is here
# or in RESTART_ONLY.
RELOADED: dict[str, str] = {
    "server": "the request path (body and header bounds, timeouts, output caps), admission "
              "(time zone, leases, priorities), key limits, alert rules (time zone)",
    "auth": "the authenticator (its key cache is emptied)",
    "upstreams": "the router (connection pools are kept per pool size and keep-alive)",
    "routes": "the router, and which models get a metric label",
    "prices": "the pricer, and which models get a metric label",
    "price_adjustments": "the pricer",
    "runs": "admission (the default budget and lifetime of a run)",
    "reconcile": "nothing in the gateway: `tokenstile reconcile` reads it at each run",
    "hidden_input": "admission",
    "hidden_reasoning": "the relay",
    "background_responses": "background responses",
    "organization": "admission", "projects": "admission and the kill switches",
    "users": "admission", "features": "admission, the kill switches and degradation",
    "limits": "admission and the alert rules", "global": "admission",
    "alerts": "admission (the default thresholds)",
    "alerting": "the alert engine (channels are rebuilt; deliveries under way finish) and "
                "the periodic rules (settings, limits and interval)",
    "policies": "the policy engine",
    "resilience": "the forwarder and the circuit breakers",
    "degradation": "degradation and throttling",
    "cache": "the cache stage: rules, TTLs, sharing, bounds and single flight; a new store "
             "is opened and the old one closed once requests using it are done",
}

_GOT = re.compile(r" \(got .*\)$")


def restart_only_changes(running: Config, new: Config) -> list[str]:
    """Dotted names of start-time settings that differ between two configs."""
    changed: list[str] = []
    for section, names in RESTART_ONLY.items():
        old_part, new_part = getattr(running, section), getattr(new, section)
        changed.extend(f"{section}.{name}" for name in names
                       if getattr(old_part, name) != getattr(new_part, name))
    return changed


def restart_only_differences(new: dict[str, Any], running: dict[str, Any]) -> list[str]:
    """Dotted names of start-time settings that differ between two configs as the admin
    API shows them (``effective_config``: secrets redacted alike on both sides)."""
    return [f"{section}.{name}" for section, names in RESTART_ONLY.items() for name in names
            if new.get(section, {}).get(name) != running.get(section, {}).get(name)]


def keep_start_settings(running: Config, new: Config) -> Config:
    """``new`` with the start-time settings of ``running``: what a reload can apply."""
    update: dict[str, Any] = {}
    for section, names in RESTART_ONLY.items():
        part = getattr(new, section)
        kept = {name: getattr(getattr(running, section), name) for name in names}
        update[section] = part.model_copy(update=kept)
    return new.model_copy(update=update)


def public_errors(errors: list[str]) -> list[str]:
    """Config errors without the offending values, which may hold interpolated secrets."""
    return [_GOT.sub("", line) for line in errors]


@dataclass
class ReloadStatus:
    """What the last reload did; shown by ``/readyz`` and the admin API."""

    source: str | None
    generation: int = 1
    loaded_at: float = 0.0
    last_attempt_at: float | None = None
    error: list[str] = field(default_factory=list)
    pending_restart: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "reload_failed" if self.error else "ok",
            "source": self.source, "generation": self.generation,
            "loaded_at": self.loaded_at, "last_attempt_at": self.last_attempt_at,
            "errors": public_errors(self.error), "pending_restart": self.pending_restart,
        }


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigReloader:
    """Reloads one runtime from its config file: on change, on SIGHUP, or when asked."""

    def __init__(self, reconfigure: Callable[[Config], list[str]], clock: Clock,
                 path: str | None, poll_s: float = 1.0,
                 on_reloaded: Callable[[], Awaitable[object]] | None = None) -> None:
        self.reconfigure = reconfigure  # applies a config; returns what waits for a restart
        self.on_reloaded = on_reloaded
        self.clock = clock
        self.path = Path(path) if path else None
        self.poll_s = poll_s
        self.status = ReloadStatus(source=str(self.path) if self.path else None,
                                   loaded_at=clock.now())
        self._lock = asyncio.Lock()
        self._seen = _signature(self.path) if self.path else None
        self._pending: asyncio.Task[ReloadStatus] | None = None

    async def reload(self) -> ReloadStatus:
        """Read, validate and apply the file; on any error keep the running config."""
        async with self._lock:
            self.status.last_attempt_at = self.clock.now()
            if self.path is None:
                self.status.error = ["no config file to reload: the gateway runs on built-in "
                                     "defaults (start it with --config or $TOKENSTILE_CONFIG)"]
                return self.status
            self._seen = _signature(self.path)
            try:
                config = await asyncio.to_thread(load_config, self.path)
            except ConfigError as err:
                self.status.error = [f"{err.source}: {line}" for line in err.errors]
                for line in public_errors(self.status.error):
                    log.error("config reload refused, the running config keeps serving: %s",
                              line)
                return self.status
            self.apply(config)
        if self.on_reloaded is not None:
            await self.on_reloaded()  # e.g. a routed model whose price changed: an alert
        return self.status

    def apply(self, config: Config) -> None:
        pending = self.reconfigure(config)
        self.status.error = []
        self.status.pending_restart = pending
        self.status.generation += 1
        self.status.loaded_at = self.clock.now()
        if pending:
            log.warning("config reloaded; %s keep their running values until a restart",
                        ", ".join(pending))
        else:
            log.warning("config reloaded from %s (generation %d)", self.path,
                        self.status.generation)

    async def watch(self) -> None:
        """Poll the file; reload when it changes. Runs until cancelled."""
        if self.path is None:
            return
        while True:
            await asyncio.sleep(self.poll_s)
            seen = _signature(self.path)
            if seen is not None and seen != self._seen:
                try:
                    await self.reload()
                except Exception:
                    log.exception("config reload failed; the running config keeps serving")

    def install_signal_handler(self) -> bool:
        """Reload on SIGHUP; False where signals cannot be handled (threads, Windows)."""
        loop = asyncio.get_running_loop()
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is None:
            return False
        try:
            loop.add_signal_handler(sighup, self._on_sighup)
        except (RuntimeError, ValueError, NotImplementedError):
            return False
        return True

    def remove_signal_handler(self) -> None:
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is not None:
            with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
                asyncio.get_running_loop().remove_signal_handler(sighup)

    def _on_sighup(self) -> None:
        log.warning("SIGHUP: reloading %s", self.path or "the config")
        self._pending = asyncio.get_running_loop().create_task(self.reload())


def config_path_from_env() -> str | None:
    return os.environ.get("TOKENSTILE_CONFIG") or None
