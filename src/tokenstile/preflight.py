"""What ``tokenstile serve`` checks before it starts workers, so that a mistake an operator
can fix reads as one line instead of a traceback: the port is free, and the counter store
and the database answer.

A store that goes away later is the gateway's stated outage mode (limits fail closed or
open, ledger rows spool); a store that is unreachable when the gateway starts is far more
often a wrong URL, a wrong port or a server not started yet, and is said so at once.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from tokenstile.config import Config
from tokenstile.stores.counters import StoreUnavailable, counter_store_from_url
from tokenstile.stores.database import database_from_url
from tokenstile.stores.urls import StoreConfigError, redact_url

STORE_CHECK_S = 15.0


class PreflightError(Exception):
    """One line saying what is wrong and what to do."""


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on (uvicorn binds only after the workers
    have opened their stores, and then exits with a bare errno)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PreflightError(
                    f"port {port} on {host} is already in use (is another tokenstile or "
                    f"server running there?): stop it or choose another with --port"
                ) from None
            raise PreflightError(f"cannot listen on {host}:{port}: {exc.strerror}; "
                                 "check --host and --port") from None


async def _check_counters(url: str) -> None:
    store = counter_store_from_url(url)
    try:
        await store.ping()
    finally:
        await store.close()


async def _check_database(url: str) -> None:
    db = database_from_url(url)
    try:
        await db.open()
    finally:
        await db.close()


def check_stores(config: Config, timeout: float = STORE_CHECK_S) -> None:
    """Reach the counter store and the database (migrating it, as a worker would)."""
    checks = [("counter store", "storage.counters", config.storage.counters, _check_counters),
              ("database", "storage.database", config.storage.database, _check_database)]
    for what, setting, url, check in checks:
        shown = redact_url(url)
        try:
            asyncio.run(asyncio.wait_for(check(url), timeout))
        except StoreConfigError as exc:
            raise PreflightError(f"{setting}: {exc}") from None
        except (StoreUnavailable, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise PreflightError(
                f"cannot reach the {what} at {shown} ({reason}): start it, or fix "
                f"{setting} in the configuration"
            ) from None
        except Exception as exc:  # e.g. SQLite: a directory that does not exist
            raise PreflightError(f"cannot open the {what} at {shown} ({exc}): fix {setting} "
                                 "in the configuration") from None
