"""Upstream trouble: when to retry, how long to wait, which model to try next, and which
upstreams to leave alone for a while (a circuit breaker per upstream).

Everything here is pure or in-process state: the forwarding stage asks these functions and
does the I/O itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenstile.clock import Clock
from tokenstile.config import CircuitBreakerConfig, ResilienceConfig


@dataclass(slots=True)
class Attempt:
    """One try at the upstream, kept in the ledger row's detail."""

    upstream: str
    model: str
    status: int | None = None
    error: str | None = None
    ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "model": self.model, "status": self.status,
                "error": self.error, "ms": round(self.ms, 2)}


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds; HTTP dates ignored)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def backoff_delay(attempt: int, config: ResilienceConfig, retry_after: float | None,
                  rand: Callable[[], float] = random.random) -> float | None:
    """How long to wait before retry number ``attempt`` (1-based); None means do not retry.

    Exponential backoff with full jitter; an upstream's Retry-After is honoured when it is
    within ``max_backoff_s`` (a longer one means the retry would not help this request).
    """
    if attempt > config.retries:
        return None
    if retry_after is not None:
        return float(retry_after) if retry_after <= config.max_backoff_s else None
    ceiling = min(config.max_backoff_s, config.backoff_s * 2.0 ** (attempt - 1))
    return ceiling * rand()


def model_chain(model: str, config: ResilienceConfig) -> list[str]:
    """The requested model, then its configured fallbacks, without repeats."""
    chain = [model]
    for candidate in config.fallbacks.get(model, ()):
        if candidate not in chain:
            chain.append(candidate)
    return chain


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    open_until: float = 0.0
    trips: int = 0


@dataclass
class CircuitBreakers:
    """Per-upstream consecutive-failure counting; an open circuit is skipped until its
    cooldown ends, then one request is let through to probe it (half-open)."""

    config: CircuitBreakerConfig | None
    clock: Clock
    _circuits: dict[str, _Circuit] = field(default_factory=dict)

    def allow(self, upstream: str) -> bool:
        if self.config is None:
            return True
        circuit = self._circuits.get(upstream)
        if circuit is None or circuit.open_until == 0.0:
            return True
        if self.clock.monotonic() >= circuit.open_until:
            circuit.open_until = self.clock.monotonic() + self.config.cooldown_s
            return True  # half-open: this request probes; others wait out the cooldown
        return False

    def success(self, upstream: str) -> None:
        circuit = self._circuits.get(upstream)
        if circuit is not None:
            circuit.failures = 0
            circuit.open_until = 0.0

    def failure(self, upstream: str) -> None:
        if self.config is None:
            return
        circuit = self._circuits.setdefault(upstream, _Circuit())
        circuit.failures += 1
        if circuit.failures >= self.config.failures:
            circuit.open_until = self.clock.monotonic() + self.config.cooldown_s
            circuit.trips += 1

    def state(self) -> dict[str, str]:
        now = self.clock.monotonic()
        return {name: ("open" if c.open_until > now else "closed" if c.failures == 0
                       else f"closed ({c.failures} recent failures)")
                for name, c in self._circuits.items()}
