"""Retry timing, fallback chains and circuit breakers, with an injected clock."""

from __future__ import annotations

from tokenstile.clock import FakeClock
from tokenstile.config import CircuitBreakerConfig, ResilienceConfig
from tokenstile.gateway.resilience import (
    CircuitBreakers,
    backoff_delay,
    model_chain,
    parse_retry_after,
)


def test_backoff_grows_with_full_jitter_and_stops_after_the_retries() -> None:
    config = ResilienceConfig(retries=3, backoff_s=0.5, max_backoff_s=1.5)
    assert backoff_delay(1, config, None, rand=lambda: 1.0) == 0.5
    assert backoff_delay(2, config, None, rand=lambda: 1.0) == 1.0
    assert backoff_delay(3, config, None, rand=lambda: 1.0) == 1.5
    assert backoff_delay(3, config, None, rand=lambda: 0.0) == 0.0
    assert backoff_delay(4, config, None) is None


def test_retry_after_is_honoured_unless_it_is_too_long() -> None:
    config = ResilienceConfig(retries=2, max_backoff_s=5)
    assert backoff_delay(1, config, 2.0) == 2.0
    assert backoff_delay(1, config, 60.0) is None
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None


def test_fallback_chain_starts_with_the_requested_model() -> None:
    config = ResilienceConfig(fallbacks={"gpt-4o": ["gpt-4o-mini", "gpt-4o", "claude-x"]})
    assert model_chain("gpt-4o", config) == ["gpt-4o", "gpt-4o-mini", "claude-x"]
    assert model_chain("other", config) == ["other"]


def test_circuit_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    clock = FakeClock()
    breakers = CircuitBreakers(CircuitBreakerConfig(failures=3, cooldown_s=10), clock)
    for _ in range(2):
        breakers.failure("a")
    assert breakers.allow("a")
    breakers.success("a")
    for _ in range(3):
        breakers.failure("a")
    assert not breakers.allow("a") and breakers.allow("b")
    assert breakers.state()["a"] == "open"
    clock.advance(10)
    assert breakers.allow("a")        # one probe goes through
    assert not breakers.allow("a")    # the rest wait while it is out
    breakers.success("a")
    assert breakers.allow("a")
