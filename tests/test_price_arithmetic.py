"""Costs are computed in whole numbers (each price times a power of ten): they must equal,
to the nano-dollar, the same formulas in Decimal arithmetic rounded half up once, for any
prices with any number of decimal places and any usage."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstile.prices import ModelPrice
from tokenstile.types import PriceTerms, Usage

_CTX = Context(prec=200, rounding=ROUND_HALF_UP)


def _first(*prices: Decimal | None) -> Decimal:
    return next(p for p in prices if p is not None)


def _nano(mtok: Decimal, per_call: Decimal) -> int:
    nano = _CTX.add(_CTX.multiply(mtok, Decimal(1000)),
                    _CTX.multiply(per_call, Decimal(10**9)))
    return max(int(_CTX.quantize(nano, Decimal(1))), 0)


def _fees(p: ModelPrice, web: int, files: int) -> Decimal:
    fees = p.per_request or Decimal(0)
    if web > 0 and p.web_search:
        fees += web * p.web_search
    if files > 0 and p.file_search:
        fees += files * p.file_search
    return fees


def decimal_cost(price: ModelPrice, u: Usage) -> int:
    """``ModelPrice.cost_nano``'s formulas in Decimal arithmetic."""
    inp, cached, written = u.input_tokens, u.cached_input_tokens, u.cache_write_tokens
    written_1h = min(u.cache_write_1h_tokens, written)
    audio_in = u.input_audio_tokens
    cached_audio = min(u.cached_audio_tokens, cached, audio_in)
    out = u.output_tokens
    audio_out = min(u.output_audio_tokens, out)
    reasoning = min(u.reasoning_tokens, out - audio_out)
    p = price.for_tier(u.service_tier).at(inp)
    fresh_audio = audio_in - cached_audio
    fresh = max(inp - cached - written - fresh_audio, 0)
    terms = [(fresh, p.input), (out - audio_out - reasoning, p.output),
             (cached - cached_audio, _first(p.cached_input, p.input)),
             (fresh_audio, _first(p.input_audio, p.input)),
             (cached_audio, _first(p.cached_audio_input, p.input_audio, p.cached_input,
                                   p.input)),
             (written - written_1h, _first(p.cache_write, p.input)),
             (written_1h, _first(p.cache_write_1h, p.cache_write, p.input)),
             (reasoning, _first(p.reasoning, p.output)),
             (audio_out, _first(p.output_audio, p.output))]
    mtok = sum((_CTX.multiply(n, rate) for n, rate in terms), Decimal(0))
    return _nano(mtok, _fees(p, u.web_search_requests, u.file_search_calls))


def decimal_estimate(price: ModelPrice, inp: int, out: int, terms: PriceTerms) -> int:
    p = price.at(inp)
    in_price = p.input
    if terms.cache_write == "1h":
        in_price = max(in_price, _first(p.cache_write_1h, p.cache_write, p.input))
    elif terms.cache_write:
        in_price = max(in_price, _first(p.cache_write, p.input))
    if terms.audio_input and p.input_audio is not None:
        in_price = max(in_price, p.input_audio)
    out_price = p.output if p.reasoning is None else max(p.output, p.reasoning)
    if terms.audio_output and p.output_audio is not None:
        out_price = max(out_price, p.output_audio)
    return _nano(_CTX.add(_CTX.multiply(inp, in_price), _CTX.multiply(out, out_price)),
                 _fees(p, terms.web_searches, terms.file_searches))


prices = st.decimals(min_value=0, max_value=1000, places=None, allow_nan=False,
                     allow_infinity=False).map(lambda d: d.normalize())
some_price = st.none() | prices


@st.composite
def model_prices(draw: st.DrawFn, depth: int = 1) -> ModelPrice:
    price = ModelPrice(
        input=draw(prices), output=draw(prices), cached_input=draw(some_price),
        cache_write=draw(some_price), per_request=draw(some_price),
        reasoning=draw(some_price), cache_write_1h=draw(some_price),
        input_audio=draw(some_price), output_audio=draw(some_price),
        cached_audio_input=draw(some_price), web_search=draw(some_price),
        file_search=draw(some_price))
    if depth:
        tiers = draw(st.lists(st.tuples(st.integers(0, 300_000), model_prices(0)), max_size=2))
        price = ModelPrice(**{**{f: getattr(price, f) for f in (
            "input", "output", "cached_input", "cache_write", "per_request", "reasoning",
            "cache_write_1h", "input_audio", "output_audio", "cached_audio_input",
            "web_search", "file_search")},
            "tiers": tuple(sorted(tiers, key=lambda t: t[0])),
            "service_tiers": (("priority", draw(model_prices(0))),)})
    return price


counts = st.integers(0, 3_000_000)


@settings(max_examples=400, deadline=None)
@given(model_prices(), counts, counts, counts, counts, counts, counts, counts, counts,
       counts, st.integers(0, 50), st.integers(0, 50), st.sampled_from([None, "priority"]))
def test_costs_equal_the_decimal_formulas(price: ModelPrice, inp: int, out: int, cached: int,
                                          written: int, written_1h: int, audio_in: int,
                                          cached_audio: int, audio_out: int, reasoning: int,
                                          web: int, files: int, tier: str | None) -> None:
    usage = Usage(input_tokens=inp, output_tokens=out, cached_input_tokens=cached,
                  cache_write_tokens=written, cache_write_1h_tokens=written_1h,
                  input_audio_tokens=audio_in, cached_audio_tokens=cached_audio,
                  output_audio_tokens=audio_out, reasoning_tokens=reasoning,
                  web_search_requests=web, file_search_calls=files, service_tier=tier)
    assert price.cost_nano(usage) == decimal_cost(price, usage)


@settings(max_examples=400, deadline=None)
@given(model_prices(), counts, counts, st.sampled_from([None, "5m", "1h"]), st.booleans(),
       st.booleans(), st.integers(0, 50), st.integers(0, 50))
def test_estimates_equal_the_decimal_formulas(price: ModelPrice, inp: int, out: int,
                                              cache_write: str | None, audio_in: bool,
                                              audio_out: bool, web: int, files: int) -> None:
    terms = PriceTerms(service_tier="default", cache_write=cache_write, audio_input=audio_in,
                       audio_output=audio_out, web_searches=web, file_searches=files)
    assert price.estimate_nano(inp, out, terms=terms) == decimal_estimate(price, inp, out,
                                                                           terms)


def test_half_a_nano_dollar_rounds_up() -> None:
    price = ModelPrice(input=Decimal("0.0005"), output=Decimal(0))
    assert price.cost_nano(Usage(input_tokens=1)) == 1  # 0.5 nano-USD
    assert price.cost_nano(Usage(input_tokens=3)) == 2  # 1.5
    assert ModelPrice(input=Decimal("0.0004999"), output=Decimal(0)).cost_nano(
        Usage(input_tokens=1)) == 0
