"""Rollover and proration arithmetic (``limits/allowance.py``) and the keys a reservation
reads for them, at explicit instants (no clock, no sleep)."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import openai
import pytest

from tokenstile.admin.schemas import KeyLimit
from tokenstile.config import ConfigError, parse_config
from tokenstile.limits.allowance import (
    Allowance,
    carried,
    carry_cap,
    first_seen,
    prorated,
    window_amount,
)
from tokenstile.limits.counter_keys import allowance, charge_ttl, counter_key
from tokenstile.limits.model import compile_limits
from tokenstile.limits.status import budget_status
from tokenstile.stores.database import KeyRecord, hash_key, new_key_id, new_key_secret

DAY = 86_400.0
START = datetime(2026, 3, 10, tzinfo=UTC).timestamp()
END = START + DAY


def rule(*, prorate: bool = False, cap: int = 0) -> Allowance:
    return Allowance(seen="s", start=START, end=END, now=START + 100, prorate=prorate,
                     previous="p" if cap else None, previous_start=START - DAY, carry_cap=cap)


def test_prorated_is_the_share_of_the_window_left() -> None:
    assert prorated(1000, START, START, END) == 1000          # seen at the start: all of it
    assert prorated(1000, START - 5, START, END) == 1000      # seen before: all of it
    assert prorated(1000, START + DAY / 4, START, END) == 750
    assert prorated(1000, START + DAY / 3, START, END) == 666  # floored, never rounded up
    assert prorated(1000, END, START, END) == 0
    # In doubles, as the Redis script computes it: within a unit of the exact share.
    assert abs(prorated(10**15, START + 1, START, END) - 10**15 * 86_399 // 86_400) <= 1


def test_prorated_past_2_53_stays_within_the_precision_of_the_share() -> None:
    # One double product of 2^60 would be off by up to 128 units, of 2^63 - 1 by 1024; the
    # two-part product stays within 10^3 units of the exact one, never above the amount.
    for amount in (2**53, 2**53 + 1, 2**60 + 7, 2**63 - 1):
        for seen in (START + 1, START + DAY / 3, START + DAY - 1):
            share = (END - seen) / (END - START)
            exact = amount * Fraction(share)
            got = prorated(amount, seen, START, END)
            assert abs(got - exact) <= 1000 and got <= amount
    assert prorated(2**60 + 7, START, START, END) == 2**60 + 7
    assert prorated(2**60 + 7, START + DAY / 2, START, END) == (2**60 + 7) // 2


def test_carried_is_what_was_left_at_most_the_cap() -> None:
    assert carried(1000, 300, 500) == 500
    assert carried(1000, 800, 500) == 200
    assert carried(1000, 1200, 500) == 0  # an overspent window carries nothing, takes nothing
    assert carry_cap(1000, 50) == 500 and carry_cap(999, 33.3) == 332
    assert carry_cap(2**60 + 3, 50) == 2**59 + 1  # exact past 2^53
    assert carry_cap(2**60, 12.5) == 2**57 and carry_cap(10**17 + 10, 0.1) == 10**14 + 0


def test_first_seen() -> None:
    assert first_seen(1234, START + 9, START, 0) == 1234       # the marker holds it
    assert first_seen(0, START + 9.7, START, 0) == START + 9   # the first charge: now
    assert first_seen(0, START + 9.7, START, 5) == START       # usage but no marker: the start


@pytest.mark.parametrize(("seen", "previous_used", "want"), [
    (START - 3 * DAY, 0, 1500),       # an old budget, idle yesterday: half the amount more
    (START - 3 * DAY, 700, 1300),     # 300 left yesterday
    (START - 3 * DAY, 1000, 1000),    # all used: nothing carried
    (START + 10, 0, 1000),            # first seen today: no yesterday to carry from
    (START, 0, 1000),
])
def test_rollover_from_the_previous_window(seen: float, previous_used: int, want: int) -> None:
    assert window_amount(1000, seen, rule(cap=500), previous_used) == want


def test_prorated_and_rolled_over() -> None:
    both = rule(prorate=True, cap=500)
    # First seen at noon today: half of today, nothing to carry.
    assert window_amount(1000, START + DAY / 2, both, 0) == 500
    # First seen at 18:00 yesterday: yesterday allowed 250, of which 50 were used.
    assert window_amount(1000, START - DAY / 4, both, 50) == 1000 + 200
    assert window_amount(1000, START - DAY / 4, rule(cap=500), 50) == 1000 + 500


def test_a_window_reads_its_marker_and_its_previous_window() -> None:
    config = parse_config({"server": {"timezone": "Europe/Berlin"}, "limits": [
        {"name": "d", "scope": "user", "window": "day", "unit": "usd", "amount": 10,
         "rollover": {"max_percent": 50}, "prorate": True}]}, env={})
    [limit] = compile_limits(config)
    assert limit.rollover_percent == 50 and limit.prorate and limit.varies
    zone = ZoneInfo("Europe/Berlin")
    # The day after the clocks went forward: yesterday had 23 hours.
    now = datetime(2026, 3, 30, 15, tzinfo=zone).timestamp()
    key, _ = counter_key(limit, "alice", now)
    got = allowance(limit, "alice", limit.amount, now)
    assert key == "user:alice:usd:day:20260330"
    assert got.seen == "user:alice:usd:day:seen"
    assert got.previous == "user:alice:usd:day:20260329"
    assert got.start == datetime(2026, 3, 30, tzinfo=zone).timestamp()
    assert got.start - got.previous_start == 23 * 3600
    assert got.end - got.start == 24 * 3600
    assert got.carry_cap == limit.amount // 2 and got.prorate and got.now == now
    # Rolled-over counters live through the next window, for it to read them.
    assert charge_ttl(limit.window, now, keep_next=True) - charge_ttl(limit.window, now) \
        == 24 * 3600


@pytest.mark.parametrize("window", ["request", "rolling:24h"])
def test_only_calendar_windows_roll_over_or_prorate(window: str) -> None:
    for option in ({"rollover": {"max_percent": 50}}, {"prorate": True}):
        with pytest.raises(ConfigError) as info:
            parse_config({"limits": [{"amount": 5, "window": window, **option}]}, env={})
        assert "needs a calendar window" in str(info.value)
    with pytest.raises(ConfigError):
        parse_config({"limits": [{"amount": 5, "rollover": {"max_percent": 150}}]}, env={})


# -- end to end: the openai SDK against the gateway in process, on a fake clock ----------

HI = [{"role": "user", "content": "hello"}]


async def _limit_of(client: Any, max_tokens: int) -> int:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI, max_tokens=max_tokens)
    raw.parse()
    return int(raw.headers["x-ratelimit-limit-tokens"])


async def test_a_budget_first_seen_at_noon_gets_half_a_day_then_rolls_over(in_process: Any) -> None:
    gw = await in_process({"limits": [{
        "name": "daily", "scope": "project", "window": "day", "unit": "tokens",
        "amount": 1000, "rollover": {"max_percent": 50}, "prorate": True}]})
    client = gw.openai(await gw.key())
    gw.clock.set(datetime(2026, 1, 1, 12, tzinfo=UTC))
    with pytest.raises(openai.RateLimitError) as refused:  # 600 output tokens > half a day
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI,
                                             max_tokens=600)
    assert "of its 500 daily tokens" in refused.value.message
    assert await _limit_of(client, 100) == 500
    day_one = sum(r.input_tokens + r.output_tokens for r in await gw.rows())
    # The next day: the whole amount, plus what the prorated first day left (at most half).
    gw.clock.set(datetime(2026, 1, 2, 6, tzinfo=UTC))
    second = 1000 + min(500, 500 - day_one)
    assert await _limit_of(client, 100) == second
    [status] = await budget_status(gw.runtime.admission.limits, gw.runtime.counters,
                                   gw.clock.now(), {"project": ["demo"]})
    assert (status.amount, status.hard) == (1000, second)  # the dashboard shows the same
    day_two = sum(r.input_tokens + r.output_tokens for r in await gw.rows()) - day_one
    gw.clock.set(datetime(2026, 1, 3, 6, tzinfo=UTC))
    assert await _limit_of(client, 100) == 1000 + min(500, 1000 - day_two)
    # A day with nothing used before it carries the cap, never more.
    gw.clock.set(datetime(2026, 1, 5, 6, tzinfo=UTC))
    assert await _limit_of(client, 100) == 1500


async def test_rollover_alone_starts_carrying_after_the_first_full_window(in_process: Any) -> None:
    gw = await in_process({"limits": [{
        "name": "daily", "scope": "project", "window": "day", "unit": "tokens",
        "amount": 1000, "rollover": {"max_percent": 30}}]})
    client = gw.openai(await gw.key())
    gw.clock.set(datetime(2026, 1, 1, 12, tzinfo=UTC))
    assert await _limit_of(client, 100) == 1000  # no proration, nothing before to carry
    gw.clock.set(datetime(2026, 1, 2, 1, tzinfo=UTC))
    assert await _limit_of(client, 100) == 1300  # 30 % of the amount at most


async def test_a_key_created_mid_month_gets_the_rest_of_the_month(in_process: Any) -> None:
    gw = await in_process({})
    gw.clock.set(datetime(2026, 4, 16, tzinfo=UTC))  # half of April is left
    secret = new_key_secret()
    spec = KeyLimit(window="month", unit="tokens", amount=3000, prorate=True)
    await gw.runtime.db.create_key(KeyRecord(
        id=new_key_id(), hash=hash_key(secret), prefix=secret[:7], project="demo",
        created_at=gw.clock.now(), limits={"monthly": spec.model_dump()}))
    assert gw.runtime.key_limits is not None
    await gw.runtime.key_limits.refresh()
    client = gw.openai(secret)
    assert await _limit_of(client, 100) == 1500
    gw.clock.set(datetime(2026, 5, 2, tzinfo=UTC))
    assert await _limit_of(client, 100) == 3000
    with pytest.raises(ValueError):
        KeyLimit(window="rolling:24h", amount=5, prorate=True)
