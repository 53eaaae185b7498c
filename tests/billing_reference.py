"""What a provider bills for one call, written from the providers' own published rules and
price pages, independently of ``tokenstile.prices`` (which this module must not import).

Prices are USD per million tokens (per thousand calls for searches), copied by hand for a
handful of models as genai-prices records them. The usage each function takes is the
provider's own usage block, as it arrives on the wire (OpenAI's totals with their details;
Anthropic's ``input_tokens`` without cache reads and writes), not tokenstile's ``Usage``.

Rules, as the providers state them:

- OpenAI: ``prompt_tokens`` (``input_tokens``) includes cached tokens and audio tokens;
  cached tokens are billed at the cached-input price, audio at the audio price (cached
  audio at the cached-audio price); ``completion_tokens`` includes reasoning tokens (billed
  as output) and audio tokens (billed at the audio output price). The tier named in the
  answer's ``service_tier`` decides the price list (``flex`` about half, ``priority`` about
  twice the standard one). Web searches are $10 and file searches $2.50 per 1,000 calls.
- Anthropic: ``input_tokens`` excludes cache reads (0.1× input) and cache writes (1.25×
  input for 5-minute writes, 2× for 1-hour writes); the long-context price applies to every
  token when input + reads + writes pass 200,000 (claude-sonnet-4-5); web searches are $10
  per 1,000.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

D = Decimal
_NONE = Decimal(0)


@dataclass(frozen=True)
class Rates:
    """One price list, USD per million tokens (None: the provider does not sell it)."""

    input: Decimal
    output: Decimal
    cached: Decimal | None = None
    write_5m: Decimal | None = None
    write_1h: Decimal | None = None
    audio_in: Decimal | None = None
    audio_out: Decimal | None = None
    audio_cached: Decimal | None = None


@dataclass(frozen=True)
class Model:
    standard: Rates
    tiers: dict[str, Rates] = field(default_factory=dict)
    long_context: tuple[int, Rates] | None = None
    web_search_per_k: Decimal = _NONE
    file_search_per_k: Decimal = _NONE


OPENAI: dict[str, Model] = {
    # https://platform.openai.com/docs/pricing (gpt-audio: text 2.50 / 10, audio 32 / 64)
    "gpt-audio": Model(Rates(D("2.5"), D(10), audio_in=D(32), audio_out=D(64))),
    # gpt-realtime: text 4 / 16 (cached 0.40), audio 32 / 64 (cached 0.40)
    "gpt-realtime": Model(Rates(D(4), D(16), cached=D("0.4"), audio_in=D(32),
                                audio_out=D(64), audio_cached=D("0.4"))),
    "gpt-4o-mini": Model(
        Rates(D("0.15"), D("0.6"), cached=D("0.075")),
        tiers={"priority": Rates(D("0.25"), D(1), cached=D("0.125"))},
        web_search_per_k=D(10), file_search_per_k=D("2.5")),
    "gpt-5": Model(
        Rates(D("1.25"), D(10), cached=D("0.125")),
        tiers={"flex": Rates(D("0.625"), D(5), cached=D("0.0625")),
               "priority": Rates(D("2.5"), D(20), cached=D("0.25"))},
        web_search_per_k=D(10), file_search_per_k=D("2.5")),
    "o4-mini": Model(
        Rates(D("1.1"), D("4.4"), cached=D("0.275")),
        tiers={"flex": Rates(D("0.55"), D("2.2"), cached=D("0.138")),
               "priority": Rates(D(2), D(8), cached=D("0.5"))},
        web_search_per_k=D(10), file_search_per_k=D("2.5")),
}

CEREBRAS: dict[str, Model] = {
    # https://www.cerebras.ai/pricing: gpt-oss-120b 0.35 / 0.75
    "gpt-oss-120b": Model(Rates(D("0.35"), D("0.75"))),
}

ANTHROPIC: dict[str, Model] = {
    # https://docs.anthropic.com/en/docs/about-claude/pricing
    "claude-sonnet-4-5": Model(
        Rates(D(3), D(15), cached=D("0.3"), write_5m=D("3.75"), write_1h=D(6)),
        long_context=(200_000, Rates(D(6), D("22.5"), cached=D("0.6"), write_5m=D("7.5"),
                                     write_1h=D(12))),
        web_search_per_k=D(10)),
    "claude-haiku-4-5": Model(
        Rates(D(1), D(5), cached=D("0.1"), write_5m=D("1.25"), write_1h=D(2)),
        web_search_per_k=D(10)),
    "claude-opus-4-5": Model(
        Rates(D(5), D(25), cached=D("0.5"), write_5m=D("6.25"), write_1h=D(10)),
        web_search_per_k=D(10)),
}


def _nano(usd_per_mtok_tokens: Decimal, usd: Decimal) -> int:
    with localcontext() as ctx:
        ctx.prec = 60
        total = usd_per_mtok_tokens / D(1_000_000) + usd
        return int((total * D(1_000_000_000)).quantize(D(1), rounding=ROUND_HALF_UP))


def _int(block: Any, key: str) -> int:
    value = block.get(key) if isinstance(block, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


def openai_bill(model: str, usage: dict[str, Any], *, served_tier: str | None = None,
                web_searches: int = 0, file_searches: int = 0,
                prices: dict[str, Model] | None = None) -> int:
    """Nano-USD OpenAI (or another provider on its rules) bills for a chat or Responses
    usage block, the tier its answer named, and the searches it ran."""
    entry = (prices or OPENAI)[model]
    rates = entry.tiers.get(served_tier or "", entry.standard)
    if "input_tokens" in usage or "output_tokens" in usage:
        total_in, total_out = _int(usage, "input_tokens"), _int(usage, "output_tokens")
        in_details = usage.get("input_tokens_details")
        out_details = usage.get("output_tokens_details")
    else:
        total_in, total_out = _int(usage, "prompt_tokens"), _int(usage, "completion_tokens")
        in_details = usage.get("prompt_tokens_details")
        out_details = usage.get("completion_tokens_details")
    cached = _int(in_details, "cached_tokens")
    audio = _int(in_details, "audio_tokens")
    cached_audio = _int(in_details.get("cached_tokens_details")
                        if isinstance(in_details, dict) else None, "audio_tokens")
    audio_out = _int(out_details, "audio_tokens")
    text_in = total_in - cached - (audio - cached_audio)
    cached_text = cached - cached_audio
    cached_price = rates.cached if rates.cached is not None else rates.input
    # A model without audio prices bills its audio as text (cached audio as cached text);
    # one with an audio price but no cached-audio price gives audio no cache discount.
    audio_in_price = rates.audio_in if rates.audio_in is not None else rates.input
    audio_cached_price = (rates.audio_cached if rates.audio_cached is not None
                          else rates.audio_in if rates.audio_in is not None else cached_price)
    tokens = (text_in * rates.input
              + cached_text * cached_price
              + (audio - cached_audio) * audio_in_price
              + cached_audio * audio_cached_price
              + (total_out - audio_out) * rates.output
              + audio_out * (rates.audio_out if rates.audio_out is not None else rates.output))
    fees = (web_searches * entry.web_search_per_k + file_searches * entry.file_search_per_k) \
        / D(1000)
    return _nano(tokens, fees)


def anthropic_bill(model: str, usage: dict[str, Any]) -> int:
    """Nano-USD Anthropic bills for a Messages ``usage`` block."""
    entry = ANTHROPIC[model]
    fresh = _int(usage, "input_tokens")
    reads = _int(usage, "cache_read_input_tokens")
    writes = _int(usage, "cache_creation_input_tokens")
    creation = usage.get("cache_creation")
    long_writes = _int(creation, "ephemeral_1h_input_tokens")
    short_writes = writes - long_writes
    rates = entry.standard
    if entry.long_context and fresh + reads + writes > entry.long_context[0]:
        rates = entry.long_context[1]
    assert rates.cached is not None and rates.write_5m is not None
    assert rates.write_1h is not None
    tokens = (fresh * rates.input + reads * rates.cached + short_writes * rates.write_5m
              + long_writes * rates.write_1h + _int(usage, "output_tokens") * rates.output)
    searches = _int(usage.get("server_tool_use"), "web_search_requests")
    return _nano(tokens, searches * entry.web_search_per_k / D(1000))
