"""A price genai-prices changes by itself (DeepSeek's off-peak hours, a dated price) is
billed at the price in force when the call is priced: the pricer's memo of a model's price
never outlives the next change of the listed price."""

from __future__ import annotations

from datetime import UTC, datetime

import genai_prices

from tokenstile.clock import FakeClock
from tokenstile.prices import Pricer, next_listed_change
from tokenstile.types import Usage

USAGE = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


def listed_nano(model: str, provider: str, at: datetime) -> int:
    total = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1_000_000, output_tokens=1_000_000), model,
        provider_id=provider, genai_request_timestamp=at).total_price
    return int(total * 1_000_000_000)


def test_deepseek_is_priced_on_each_side_of_its_daily_window() -> None:
    before = datetime(2026, 3, 2, 16, 29, 50, tzinfo=UTC)
    after = datetime(2026, 3, 2, 16, 30, 10, tzinfo=UTC)
    assert listed_nano("deepseek-chat", "deepseek", before) != \
        listed_nano("deepseek-chat", "deepseek", after)  # the list changes at 16:30 UTC
    clock = FakeClock(before)
    pricer = Pricer(clock=clock)
    assert pricer.cost_nano("deepseek-chat", USAGE, "deepseek") == \
        listed_nano("deepseek-chat", "deepseek", before)
    clock.set(after)  # within the memo's hour, past the change
    assert pricer.cost_nano("deepseek-chat", USAGE, "deepseek") == \
        listed_nano("deepseek-chat", "deepseek", after)


def test_the_next_listed_change() -> None:
    pricer = Pricer()
    info = pricer.genai_info("deepseek-chat", "deepseek")
    noon = datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()
    assert next_listed_change(info, noon) == datetime(2026, 3, 2, 16, 30,
                                                      tzinfo=UTC).timestamp()
    evening = datetime(2026, 3, 2, 20, 0, tzinfo=UTC).timestamp()
    assert next_listed_change(info, evening) == datetime(2026, 3, 3, 0, 30,
                                                         tzinfo=UTC).timestamp()
    # a model whose listed price does not change
    assert next_listed_change(pricer.genai_info("llama-3.1-8b-instant", "groq"), noon) is None


def test_media_prices_follow_a_listed_change_within_the_memo() -> None:
    """``genai_prices`` (the entry media pricing reads) expires at the next listed change
    as ``price_for`` does, not an hour after it was looked up."""
    before = datetime(2026, 3, 2, 16, 29, 50, tzinfo=UTC)
    after = datetime(2026, 3, 2, 16, 30, 10, tzinfo=UTC)
    info = Pricer().genai_info("deepseek-chat", "deepseek")
    assert info.get_prices(before) != info.get_prices(after)
    clock = FakeClock(before)
    pricer = Pricer(clock=clock)
    assert pricer.genai_prices("deepseek-chat", "deepseek") == info.get_prices(before)
    clock.advance(5)  # still before the change: the memoized entry
    assert pricer.genai_prices("deepseek-chat", "deepseek") == info.get_prices(before)
    clock.set(after)
    assert pricer.genai_prices("deepseek-chat", "deepseek") == info.get_prices(after)
    # A price that does not change is kept for the memo's hour.
    steady = Pricer(clock=clock)
    first = steady.genai_prices("llama-3.1-8b-instant", "groq")
    assert first is not None and steady._raw[("genai", "groq", "llama-3.1-8b-instant")][1] \
        == clock.monotonic() + 3600.0
