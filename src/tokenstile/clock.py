"""Time, injectable: production code asks a Clock, tests move a FakeClock by hand."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time in seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """A monotonic reading in seconds, for measuring durations."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, start: float | datetime = 1_767_225_600.0) -> None:
        self._now = start.timestamp() if isinstance(start, datetime) else float(start)
        self._mono = 1_000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    def set(self, when: float | datetime) -> None:
        new = when.timestamp() if isinstance(when, datetime) else float(when)
        self._mono += max(0.0, new - self._now)
        self._now = new

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self._now, UTC)


SYSTEM_CLOCK = SystemClock()
