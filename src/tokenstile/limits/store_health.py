"""The counter store as admission sees it: up, or down since when, and failing fast.

While the store is down, calls fail at once instead of each waiting out the store's
timeout, except one probe every ``STORE_RETRY_S``; the first success ends the outage.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tokenstile.clock import Clock
from tokenstile.stores.counters import StoreUnavailable

log = logging.getLogger("tokenstile.admission")

T = TypeVar("T")

# After a failed store call, further calls fail at once for this long (one probe at a time
# after it), so an outage costs each request microseconds, not the store's timeout.
STORE_RETRY_S = 0.5


class StoreHealth:
    def __init__(self, clock: Clock,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.clock = clock
        self.on_error = on_error  # called with the failed operation's name
        self.errors = 0
        self.error: str | None = None
        self.down_since: float | None = None  # wall-clock time of the first failure
        self.healthy_since = clock.monotonic()
        self._retry_at = 0.0
        self._probing = False

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failing_fast(self) -> bool:
        return self.down_since is not None and (
            self._probing or self.clock.monotonic() < self._retry_at)

    async def call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One call on the counter store. While it is down, calls fail at once, except one
        probe every ``STORE_RETRY_S``; each real failure is counted (``on_error``)."""
        if self.down_since is not None:
            if self.failing_fast():
                raise StoreUnavailable(f"the counter store is unavailable ({self.error})")
            self._probing = probe = True
        else:
            probe = False
        try:
            result = await call()
        except StoreUnavailable as exc:
            self._failed(what, exc)
            raise
        finally:
            if probe:
                self._probing = False
        if self.down_since is not None:
            log.warning("the counter store answers again after %.1f s",
                        self.clock.now() - self.down_since)
            self.down_since, self.error = None, None
            self.healthy_since = self.clock.monotonic()
        return result

    def _failed(self, what: str, exc: StoreUnavailable) -> None:
        self.errors += 1
        self._retry_at = self.clock.monotonic() + STORE_RETRY_S
        if self.down_since is None:
            self.down_since = self.clock.now()
            log.warning("counter store unavailable (%s): limits fail closed or open as "
                        "configured until it answers", exc)
        self.error = f"{what}: {exc}"
        if self.on_error is not None:
            self.on_error(what)

    def healthy_for(self) -> float:
        """Seconds since the store last came back (or since start)."""
        return self.clock.monotonic() - self.healthy_since

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else self.clock.now() - self.down_since
