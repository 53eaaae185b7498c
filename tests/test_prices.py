"""Costs from usage: genai-prices lookups, overrides, cache and reasoning billing, tiers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstile import prices
from tokenstile.clock import FakeClock
from tokenstile.prices import ModelPrice, Pricer, parse_price_override
from tokenstile.types import PriceTerms, Usage

D = Decimal


def listed(model: str, provider: str | None = None) -> Any:
    """The package's own standard price entry for a model, as of now."""
    info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)[1]
    return info.get_prices(datetime.now(UTC))


def genai_nano(model: str, usage: Usage, provider: str | None = None) -> int:
    """genai-prices' own total for our usage, converted to its convention and to nano-USD."""
    g = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )
    total = genai_prices.calc_price(g, model, provider_id=provider).total_price
    return int((total * 1_000_000_000).quantize(D(1), rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


# --- the package's listed prices, as the hand computations below assume them ----------------


@pytest.mark.parametrize(
    ("model", "provider", "inp", "out", "cached"),
    [
        ("gpt-4o", None, "2.5", "10", "1.25"),
        ("gpt-4o-mini", None, "0.15", "0.6", "0.075"),
        ("gpt-5", None, "1.25", "10", "0.125"),
        ("text-embedding-3-small", "openai", "0.02", None, None),
    ],
)
def test_listed_prices(
    pricer: Pricer, model: str, provider: str | None, inp: str, out: str | None, cached: str | None
) -> None:
    gp = listed(model, provider)
    assert gp.input_mtok == D(inp)
    assert gp.output_mtok == (None if out is None else D(out))
    assert gp.cache_read_mtok == (None if cached is None else D(cached))
    ours = pricer.price_for(model)
    assert ours is not None
    assert ours.input == D(inp)
    assert ours.output == D(out or 0)
    assert ours.cached_input == (None if cached is None else D(cached))
    assert ours.tiers == ()


def test_listed_claude_prices(pricer: Pricer) -> None:
    gp = listed("claude-sonnet-4-5", "anthropic")
    assert (gp.input_mtok.base, gp.input_mtok.tiers[0].start, gp.input_mtok.tiers[0].price) == (
        D(3),
        200_000,
        D(6),
    )
    assert (gp.output_mtok.base, gp.output_mtok.tiers[0].price) == (D(15), D("22.5"))
    assert (gp.cache_read_mtok.base, gp.cache_read_mtok.tiers[0].price) == (D("0.3"), D("0.6"))
    assert (gp.cache_write_mtok.base, gp.cache_write_mtok.tiers[0].price) == (D("3.75"), D("7.5"))
    assert (gp.cache_write_1h_mtok.base, gp.cache_write_1h_mtok.tiers[0].price) == (D(6), D(12))
    assert gp.web_searches_kcount == D(10)
    ours = pricer.price_for("claude-sonnet-4-5")
    assert ours == ModelPrice(
        input=D(3),
        output=D(15),
        cached_input=D("0.3"),
        cache_write=D("3.75"),
        cache_write_1h=D(6),
        web_search=D("0.01"),
        tiers=(
            (
                200_000,
                ModelPrice(
                    input=D(6), output=D("22.5"), cached_input=D("0.6"), cache_write=D("7.5"),
                    cache_write_1h=D(12), web_search=D("0.01"),
                ),
            ),
        ),
    )


# --- costs computed by hand from those prices ---------------------------------------------------


def test_gpt_4o_with_cached_tokens(pricer: Pricer) -> None:
    usage = Usage(input_tokens=1_000, output_tokens=500, cached_input_tokens=200)
    # 800 × 2.5 + 200 × 1.25 + 500 × 10 = 7,250 USD per million = 0.00725 USD
    assert pricer.cost_nano("gpt-4o", usage) == 7_250_000
    assert pricer.cost_nano("gpt-4o", usage) == genai_nano("gpt-4o", usage)


def test_gpt_4o_mini(pricer: Pricer) -> None:
    usage = Usage(input_tokens=12_345, output_tokens=678, cached_input_tokens=3_000)
    # 9,345 × 0.15 + 3,000 × 0.075 + 678 × 0.6 = 1,401.75 + 225 + 406.8 = 2,033.55
    assert pricer.cost_nano("gpt-4o-mini", usage) == 2_033_550
    assert pricer.cost_nano("gpt-4o-mini", usage) == genai_nano("gpt-4o-mini", usage)


def test_gpt_5_reasoning_is_billed_as_output(pricer: Pricer) -> None:
    usage = Usage(
        input_tokens=2_000, output_tokens=3_000, cached_input_tokens=1_000, reasoning_tokens=2_500
    )
    # 1,000 × 1.25 + 1,000 × 0.125 + 3,000 × 10 = 31,375
    assert pricer.cost_nano("gpt-5", usage) == 31_375_000
    no_reasoning = Usage(input_tokens=2_000, output_tokens=3_000, cached_input_tokens=1_000)
    assert pricer.cost_nano("gpt-5", no_reasoning) == 31_375_000
    assert pricer.cost_nano("gpt-5", usage) == genai_nano("gpt-5", usage)


def test_claude_cache_read_and_write(pricer: Pricer) -> None:
    # Our convention: input includes the 2,000 cache reads and 1,000 cache writes.
    usage = Usage(
        input_tokens=10_000,
        output_tokens=1_000,
        cached_input_tokens=2_000,
        cache_write_tokens=1_000,
    )
    # 7,000 × 3 + 2,000 × 0.3 + 1,000 × 3.75 + 1,000 × 15 = 21,000 + 600 + 3,750 + 15,000
    assert pricer.cost_nano("claude-sonnet-4-5", usage) == 40_350_000
    assert pricer.cost_nano("claude-sonnet-4-5", usage) == genai_nano("claude-sonnet-4-5", usage)


def test_claude_long_context_tier(pricer: Pricer) -> None:
    long = Usage(input_tokens=250_000, output_tokens=2_000, cached_input_tokens=50_000)
    # Past 200k input tokens every token pays the tier: 200,000 × 6 + 50,000 × 0.6 + 2,000 × 22.5
    assert pricer.cost_nano("claude-sonnet-4-5", long) == 1_275_000_000
    assert pricer.cost_nano("claude-sonnet-4-5", long) == genai_nano("claude-sonnet-4-5", long)
    at_threshold = Usage(input_tokens=200_000, output_tokens=0)
    assert pricer.cost_nano("claude-sonnet-4-5", at_threshold) == 600_000_000  # 200,000 × 3
    over = Usage(input_tokens=200_001, output_tokens=0)
    assert pricer.cost_nano("claude-sonnet-4-5", over) == 1_200_006_000  # 200,001 × 6
    assert pricer.estimate_nano("claude-sonnet-4-5", 250_000, 1_000) == 1_522_500_000


def test_embedding(pricer: Pricer) -> None:
    usage = Usage(input_tokens=12_345)
    assert pricer.cost_nano("text-embedding-3-small", usage) == 246_900  # 12,345 × 0.02
    # genai-prices alone cannot place this name with a provider; the pricer infers openai.
    with pytest.raises(LookupError):
        genai_prices.calc_price(genai_prices.Usage(input_tokens=1), "text-embedding-3-small")
    assert pricer.cost_nano("text-embedding-3-small", usage) == genai_nano(
        "text-embedding-3-small", usage, "openai"
    )


def test_cache_prices_fall_back_to_input(pricer: Pricer) -> None:
    # gpt-4o lists no cache-write price: written tokens pay the input price.
    usage = Usage(input_tokens=1_000, output_tokens=0, cache_write_tokens=400)
    assert pricer.cost_nano("gpt-4o", usage) == 2_500_000
    plain = ModelPrice(input=D(2), output=D(8))
    assert plain.cost_nano(Usage(input_tokens=100, cached_input_tokens=100)) == 200_000


def test_rounding_is_half_up() -> None:
    p = ModelPrice(input=D("0.0005"), output=D("0.0004"))  # 0.5 and 0.4 nano per token
    assert p.cost_nano(Usage(input_tokens=1)) == 1
    assert p.cost_nano(Usage(input_tokens=2)) == 1
    assert p.cost_nano(Usage(input_tokens=3)) == 2
    assert p.cost_nano(Usage(output_tokens=1)) == 0
    assert p.cost_nano(Usage(input_tokens=1, output_tokens=1)) == 1  # 0.9 rounds once, at the end


def test_exact_whatever_the_decimal_context() -> None:
    p = ModelPrice(input=D("1.23456789"), output=D("9.87654321"))
    usage = Usage(input_tokens=987_654_321, output_tokens=123_456_789)
    expected = p.cost_nano(usage)
    with localcontext() as ctx:
        ctx.prec = 3
        assert p.cost_nano(usage) == expected
    # 987,654,321 × 1.23456789 + 123,456,789 × 9.87654321, × 1000, rounded half up
    exact = (987_654_321 * D("1.23456789") + 123_456_789 * D("9.87654321")) * 1000
    assert expected == int(exact.quantize(D(1), rounding=ROUND_HALF_UP))


def test_inconsistent_usage_never_goes_negative() -> None:
    p = ModelPrice(input=D(2), output=D(8), cached_input=D(1))
    weird = Usage(input_tokens=10, cached_input_tokens=100, output_tokens=-5, reasoning_tokens=9)
    assert p.cost_nano(weird) == 100_000  # the 100 cached tokens at 1, nothing else
    assert p.estimate_nano(-1, -1) == 0


def test_per_request_and_reasoning_prices() -> None:
    p = ModelPrice(input=D(1), output=D(4), per_request=D("0.005"), reasoning=D(2))
    usage = Usage(input_tokens=1_000, output_tokens=1_000, reasoning_tokens=600)
    # 1,000 × 1 + 400 × 4 + 600 × 2 = 3,800 per million, + 0.005 USD per request
    assert p.cost_nano(usage) == 3_800_000 + 5_000_000
    assert p.estimate_nano(1_000, 1_000) == 1_000_000 + 4_000_000 + 5_000_000


def test_per_request_price_from_genai(pricer: Pricer) -> None:
    gp = listed("sonar", "perplexity")
    price = pricer.price_for("sonar", "perplexity")
    assert price is not None and gp.requests_kcount is not None
    assert price.per_request == gp.requests_kcount / 1000
    usage = Usage(input_tokens=1_000, output_tokens=1_000)
    assert pricer.cost_nano("sonar", usage, "perplexity") == genai_nano(
        "sonar", usage, "perplexity"
    )


def test_estimate_has_no_cache_discount(pricer: Pricer) -> None:
    assert pricer.estimate_nano("gpt-4o", 1_000, 500) == 7_500_000  # 1,000 × 2.5 + 500 × 10
    assert pricer.estimate_nano("gpt-4o", 1_000, 500) == pricer.cost_nano(
        "gpt-4o", Usage(input_tokens=1_000, output_tokens=500)
    )


# --- agreement with genai-prices over many usages -------------------------------------------------

COMPARED = [
    ("gpt-4o", None),
    ("gpt-4o-mini", None),
    ("gpt-5", None),
    ("claude-sonnet-4-5", None),
    ("claude-haiku-4-5", "anthropic"),
    ("gemini-2.5-pro", None),
    ("qwen/qwen3-coder-flash", "openrouter"),  # two long-context thresholds
]


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(COMPARED),
    # Both sides of every long-context threshold, plus anything in between.
    st.sampled_from([0, 1, 31_999, 32_000, 32_001, 128_000, 128_001, 200_000, 200_001, 250_000])
    | st.integers(0, 400_000),
    st.integers(0, 100_000),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_agrees_with_genai_prices(
    model_provider: tuple[str, str | None],
    inp: int,
    out: int,
    cached_share: float,
    write_share: float,
) -> None:
    model, provider = model_provider
    cached = int(inp * cached_share)
    written = int((inp - cached) * write_share)
    usage = Usage(
        input_tokens=inp, output_tokens=out, cached_input_tokens=cached, cache_write_tokens=written
    )
    assert Pricer().cost_nano(model, usage, provider) == genai_nano(model, usage, provider)


def test_multi_threshold_tiers(pricer: Pricer) -> None:
    price = pricer.price_for("qwen/qwen3-coder-flash", "openrouter")
    assert price is not None
    assert [t for t, _ in price.tiers] == [32_000, 128_000]
    assert price.at(32_000) is price
    assert price.at(32_001) is price.tiers[0][1]
    assert price.at(500_000) is price.tiers[1][1]


# --- lookup: names, providers, unknowns, memo ----------------------------------------------------


def test_names_and_providers(pricer: Pricer) -> None:
    gpt4o = pricer.price_for("gpt-4o")
    assert gpt4o is not None
    assert pricer.price_for("openai/gpt-4o") == gpt4o
    assert pricer.price_for("GPT-4o") == gpt4o
    assert pricer.price_for("gpt-4o-2024-08-06") == gpt4o
    assert pricer.price_for("gpt-4o", "my-own-upstream") == gpt4o  # unknown provider: inferred
    assert pricer.price_for("gpt-4o", "azure") is not None
    claude = pricer.price_for("claude-sonnet-4-5-20250929")
    assert claude == pricer.price_for("anthropic/claude-sonnet-4-5")
    assert claude == pricer.price_for("claude-sonnet-4-5", "anthropic")


@pytest.mark.parametrize(
    "model", ["my-azure-deployment", "", "gpt-unknown-9000x", "omni-moderation-latest"]
)
def test_unknown_models(pricer: Pricer, model: str) -> None:
    assert pricer.price_for(model) is None
    assert not pricer.known(model)
    assert pricer.cost_nano(model, Usage(input_tokens=10)) is None
    assert pricer.estimate_nano(model, 10, 10) is None


def test_known(pricer: Pricer) -> None:
    assert pricer.known("gpt-4o")
    assert pricer.known("claude-sonnet-4-5")


def test_lookups_are_memoized_hits_and_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str | None, str]] = []
    real = prices._genai_lookup

    def counting(provider: str | None, ref: str) -> Any:
        calls.append((provider, ref))
        return real(provider, ref)

    monkeypatch.setattr(prices, "_genai_lookup", counting)
    clock = FakeClock()
    p = Pricer(clock=clock, ttl=60)
    assert p.price_for("gpt-4o") is not None
    assert p.price_for("no-such-model") is None
    n = len(calls)
    assert n >= 2
    for _ in range(5):
        assert p.cost_nano("gpt-4o", Usage(input_tokens=1)) == 2_500
        assert p.price_for("no-such-model") is None
    assert len(calls) == n
    clock.advance(61)
    p.price_for("gpt-4o")
    assert len(calls) > n


def test_dated_prices_follow_the_clock() -> None:
    # genai-prices lists o3 at 10/40 until 2025-06-10 and 2/8 from then on.
    clock = FakeClock(datetime(2025, 1, 1, tzinfo=UTC))
    p = Pricer(clock=clock, ttl=3600)
    before = p.price_for("o3")
    assert before is not None and (before.input, before.output) == (D(10), D(40))
    clock.set(datetime(2025, 7, 1, tzinfo=UTC))
    after = p.price_for("o3")
    assert after is not None and (after.input, after.output) == (D(2), D(8))


# --- overrides -------------------------------------------------------------------------------


def test_overrides_win_exact_over_pattern_longest_pattern_first() -> None:
    exact = ModelPrice(input=D(1), output=D(1))
    short = ModelPrice(input=D(2), output=D(2))
    long = ModelPrice(input=D(3), output=D(3))
    p = Pricer({"gpt-4o*": short, "gpt-4o-mini*": long, "gpt-4o-mini": exact, "corp-*": short})
    assert p.price_for("gpt-4o-mini") is exact
    assert p.price_for("openai/gpt-4o-mini") is exact
    assert p.price_for("gpt-4o-mini-2024-07-18") is long
    assert p.price_for("gpt-4o") is short
    assert p.price_for("corp-llm") is short
    assert p.price_for("CORP-LLM") is short
    # 1,000 × 2 + 1,000 × 2 = 4,000 USD per million tokens = 0.004 USD
    assert p.cost_nano("corp-llm", Usage(input_tokens=1_000, output_tokens=1_000)) == 4_000_000
    gpt5 = p.price_for("gpt-5")  # not overridden: from genai-prices
    assert gpt5 is not None and gpt5.input == D("1.25")


def test_parse_price_override() -> None:
    p = parse_price_override({"input": 2.5, "output": 10, "cached_input": "1.25"})
    assert p == ModelPrice(input=D("2.5"), output=D(10), cached_input=D("1.25"))
    full = parse_price_override(
        {
            "input": 0.1,
            "output": 0.3,
            "cached_input": 0.01,
            "cache_write": 0.2,
            "per_request": 0.001,
        }
    )
    assert full.cache_write == D("0.2") and full.per_request == D("0.001")
    assert parse_price_override({"input": 0.02, "output": 0}).output == D(0)


@pytest.mark.parametrize(
    "bad",
    [
        {"input": 1},
        {"output": 1},
        {"input": 1, "output": 1, "ouput": 2},
        {"input": -1, "output": 1},
        {"input": "abc", "output": 1},
        {"input": float("nan"), "output": 1},
        {"input": float("inf"), "output": 1},
        {"input": True, "output": 1},
        {"input": [1], "output": 1},
        {"input_per_mtok": 1, "output_per_mtok": 1},
    ],
)
def test_parse_price_override_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_price_override(bad)


# --- audio, 1-hour cache writes, service tiers, search fees, providers ------------------------


def test_audio_tokens_are_priced_at_the_audio_rates(pricer: Pricer) -> None:
    # gpt-audio: text 2.5 / 10, audio 32 / 64 per million tokens.
    usage = Usage(input_tokens=10_000, output_tokens=5_000, input_audio_tokens=8_000,
                  output_audio_tokens=5_000)
    # 2,000 × 2.5 + 8,000 × 32 + 5,000 × 64 = 5,000 + 256,000 + 320,000 = 581,000
    assert pricer.cost_nano("gpt-audio", usage) == 581_000_000
    text_only = Usage(input_tokens=10_000, output_tokens=5_000)
    assert pricer.cost_nano("gpt-audio", text_only) == 75_000_000


def test_cached_audio_has_its_own_rate(pricer: Pricer) -> None:
    # gpt-realtime: text 4 / 16, cached 0.4, audio 32 / 64, cached audio 0.4.
    usage = Usage(input_tokens=1_000, output_tokens=100, cached_input_tokens=600,
                  input_audio_tokens=500, cached_audio_tokens=400)
    # text: 1,000 - 600 - 100 = 300 × 4; cached text 200 × 0.4; audio 100 × 32;
    # cached audio 400 × 0.4; output 100 × 16
    assert pricer.cost_nano("gpt-realtime", usage) == (1_200 + 80 + 3_200 + 160 + 1_600) * 1_000


def test_one_hour_cache_writes_cost_more_than_five_minute_ones(pricer: Pricer) -> None:
    # claude-opus-4-5: input 5, 5-minute write 6.25, 1-hour write 10, output 25.
    usage = Usage(input_tokens=100_010, output_tokens=100, cache_write_tokens=100_000,
                  cache_write_1h_tokens=100_000)
    # 10 × 5 + 100,000 × 10 + 100 × 25
    assert pricer.cost_nano("claude-opus-4-5", usage, "anthropic") == 1_002_550_000
    five = Usage(input_tokens=100_010, output_tokens=100, cache_write_tokens=100_000)
    assert pricer.cost_nano("claude-opus-4-5", five, "anthropic") == 627_550_000


def test_long_context_one_hour_writes_use_the_tier_price(pricer: Pricer) -> None:
    # claude-sonnet-4-5 past 200k input: 1-hour writes at 12 instead of 6.
    usage = Usage(input_tokens=250_000, output_tokens=0, cache_write_tokens=250_000,
                  cache_write_1h_tokens=250_000)
    assert pricer.cost_nano("claude-sonnet-4-5", usage) == 3_000_000_000


@pytest.mark.parametrize(("tier", "nano"), [
    (None, 21_250_000), ("default", 21_250_000), ("flex", 10_625_000),
    ("priority", 42_500_000), ("scale", 21_250_000),
])
def test_the_tier_that_served_the_call_sets_its_price(
        pricer: Pricer, tier: str | None, nano: int) -> None:
    # gpt-5: 1,000 × 1.25 + 2,000 × 10 = 21,250 per million at the standard tier.
    usage = Usage(input_tokens=1_000, output_tokens=2_000, service_tier=tier)
    assert pricer.cost_nano("gpt-5", usage) == nano


def test_an_answer_without_a_tier_is_priced_at_the_tier_asked_for(pricer: Pricer) -> None:
    usage = Usage(input_tokens=1_000, output_tokens=2_000)
    assert pricer.cost_nano("gpt-5", usage, service_tier="flex") == 10_625_000
    named = Usage(input_tokens=1_000, output_tokens=2_000, service_tier="default")
    assert pricer.cost_nano("gpt-5", named, service_tier="flex") == 21_250_000


def test_search_fees_are_billed_per_call(pricer: Pricer) -> None:
    # Anthropic: $10 per 1,000 web searches; OpenAI: $10 web, $2.50 file searches.
    claude = Usage(input_tokens=1_000, output_tokens=100, web_search_requests=3)
    assert pricer.cost_nano("claude-haiku-4-5", claude) == 1_500_000 + 30_000_000
    gpt = Usage(input_tokens=1_000, output_tokens=100, web_search_requests=2,
                file_search_calls=4)
    assert pricer.cost_nano("gpt-4o-mini", gpt) == 210_000 + 20_000_000 + 10_000_000


def test_the_serving_provider_s_prices_are_used() -> None:
    p = Pricer()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    # gpt-oss-120b by name alone is OpenAI's listing (0.039 / 0.18); Cerebras bills it at
    # 0.35 / 0.75.
    assert p.cost_nano("gpt-oss-120b", usage) == 219_000_000
    assert p.cost_nano("gpt-oss-120b", usage, "cerebras") == 1_100_000_000
    # A provider that does not list a model leaves it unpriced rather than borrowing a
    # price another provider lists for that name.
    assert p.price_for("gpt-4o", "anthropic") is None
    assert p.price_for("claude-haiku-4-5", "anthropic") is not None
    # A provider genai-prices does not know: the name decides, as without one.
    assert p.price_for("gpt-4o", "my-proxy") == p.price_for("gpt-4o")


def test_provider_qualified_overrides_apply_to_that_provider_only() -> None:
    mine = ModelPrice(input=D(1), output=D(1))
    p = Pricer({"cerebras/gpt-oss-120b": mine})
    assert p.price_for("gpt-oss-120b", "cerebras") is mine
    for provider in ("ovhcloud", None):
        other = p.price_for("gpt-oss-120b", provider)
        assert other is not None and other is not mine


def test_upstream_provider() -> None:
    from tokenstile.prices import upstream_provider

    assert upstream_provider("openai", "https://api.openai.com/v1") == "openai"
    assert upstream_provider("openai", "https://api.cerebras.ai/v1") == "cerebras"
    assert upstream_provider("openai", "https://api.groq.com/openai/v1") == "groq"
    assert upstream_provider("openai", "https://openrouter.ai/api/v1") == "openrouter"
    assert upstream_provider("azure", "https://res.openai.azure.com/openai") == "azure"
    assert upstream_provider("anthropic", "http://127.0.0.1:9999") == "anthropic"
    assert upstream_provider("openai", "http://127.0.0.1:8000/v1") is None
    assert upstream_provider("openai", "http://gpu:8000/v1", "Groq") == "groq"


def test_lookups_are_memoized_per_provider_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str | None, str]] = []
    real = prices._genai_lookup

    def counting(provider: str | None, ref: str) -> Any:
        calls.append((provider, ref))
        return real(provider, ref)

    monkeypatch.setattr(prices, "_genai_lookup", counting)
    p = Pricer()
    for tier in (None, "flex", "priority", "default", None):
        assert p.price_for("gpt-5", "openai", service_tier=tier) is not None
        assert p.cost_nano("gpt-5", Usage(input_tokens=1, service_tier=tier), "openai")
    assert calls == [("openai", "gpt-5")]


# --- reservations ----------------------------------------------------------------------------


def test_reservation_without_terms_is_the_standard_text_price(pricer: Pricer) -> None:
    assert pricer.estimate_nano("gpt-5", 1_000, 2_000) == 21_250_000


def test_reservation_holds_the_priciest_tier_when_the_tier_is_left_open(
        pricer: Pricer) -> None:
    open_tier = PriceTerms()
    assert pricer.estimate_nano("gpt-5", 1_000, 2_000, terms=open_tier) == 42_500_000
    auto = PriceTerms(service_tier="auto")
    assert pricer.estimate_nano("gpt-5", 1_000, 2_000, terms=auto) == 42_500_000
    assert pricer.estimate_nano("gpt-5", 1_000, 2_000,
                                terms=PriceTerms(service_tier="flex")) == 10_625_000
    assert pricer.estimate_nano("gpt-5", 1_000, 2_000,
                                terms=PriceTerms(service_tier="default")) == 21_250_000
    # No tiers in the price table: the standard price whatever was asked.
    assert pricer.estimate_nano("claude-haiku-4-5", 1_000, 100,
                                terms=open_tier) == 1_500_000


def test_reservation_holds_the_cache_write_premium_asked_for(pricer: Pricer) -> None:
    # claude-opus-4-5: all 100,000 input tokens may be written.
    plain = pricer.estimate_nano("claude-opus-4-5", 100_000, 100, "anthropic",
                                 terms=PriceTerms())
    short = pricer.estimate_nano("claude-opus-4-5", 100_000, 100, "anthropic",
                                 terms=PriceTerms(cache_write="5m"))
    long = pricer.estimate_nano("claude-opus-4-5", 100_000, 100, "anthropic",
                                terms=PriceTerms(cache_write="1h"))
    assert (plain, short, long) == (502_500_000, 627_500_000, 1_002_500_000)
    # The reservation covers the worst bill: every input token written for an hour.
    worst = Usage(input_tokens=100_000, output_tokens=100, cache_write_tokens=100_000,
                  cache_write_1h_tokens=100_000)
    assert pricer.cost_nano("claude-opus-4-5", worst, "anthropic") == long


def test_reservation_holds_audio_and_bounded_search_fees(pricer: Pricer) -> None:
    terms = PriceTerms(service_tier="default", audio_input=True, audio_output=True)
    # 1,000 × 32 + 1,000 × 64
    assert pricer.estimate_nano("gpt-audio", 1_000, 1_000, terms=terms) == 96_000_000
    searches = PriceTerms(service_tier="default", web_searches=5, file_searches=2)
    # 1,000 × 0.15 + 1,000 × 0.6 = 750 nano-units, + 5 × $0.01 + 2 × $0.0025
    assert pricer.estimate_nano("gpt-4o-mini", 1_000, 1_000, terms=searches) == \
        750_000 + 55_000_000


# --- configured prices ------------------------------------------------------------------------


def test_parse_price_override_with_every_key_and_service_tiers() -> None:
    p = parse_price_override({
        "input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75,
        "cache_write_1h": 6, "input_audio": 32, "output_audio": 64,
        "cached_audio_input": 0.4, "reasoning": 15, "per_request": 0, "web_search": 0.01,
        "file_search": 0.0025, "service_tiers": {"Priority": {"input": 4.5, "output": 22.5}},
    })
    assert (p.cache_write_1h, p.input_audio, p.output_audio, p.cached_audio_input) == (
        D(6), D(32), D(64), D("0.4"))
    assert (p.web_search, p.file_search) == (D("0.01"), D("0.0025"))
    priority = p.for_tier("priority")
    assert (priority.input, priority.output, priority.cached_input) == (D("4.5"), D("22.5"),
                                                                        D("0.3"))
    usage = Usage(input_tokens=1_000, output_tokens=1_000, service_tier="priority")
    assert p.cost_nano(usage) == 27_000_000
    with pytest.raises(ValueError, match="unknown price keys"):
        parse_price_override({"input": 1, "output": 1, "service_tiers": {"flex": {"inptu": 1}}})


def test_configured_prices_reach_the_pricer() -> None:
    from tokenstile.config import parse_config
    from tokenstile.price_table import pricer_from_config

    config = parse_config({"prices": {"corp-llm": {
        "input": 1, "output": 2, "cache_write_1h": 4, "web_search": 0.02,
        "service_tiers": {"flex": {"input": 0.5}}}}}, env={})
    price = pricer_from_config(config).price_for("corp-llm")
    assert price is not None
    assert (price.cache_write_1h, price.web_search) == (D(4), D("0.02"))
    assert price.for_tier("flex").input == D("0.5") and price.for_tier("flex").output == D(2)
