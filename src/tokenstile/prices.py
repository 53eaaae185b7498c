"""What a call costs, in whole nano-dollars, from genai-prices' offline snapshot.

Every price is a ``Decimal`` in USD per million tokens and every cost an exact ``int`` of
nano-USD, so ledgers and budgets never drift. Looking a model up in genai-prices costs
about 200 µs, so lookups (hits and misses) are memoized; operators can override or add
prices per exact model name or glob pattern.

Usage follows tokenstile's (OpenAI's) convention: ``input_tokens`` includes cache reads
and cache writes, ``output_tokens`` includes reasoning tokens.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any, Final

from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.types import NANO_PER_USD, Usage

__all__ = ["ModelPrice", "Pricer", "parse_price_override"]

_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
# Nano-USD per (USD per million tokens × tokens) = 1e9 / 1e6.
_NANO_PER_MTOK_UNIT: Final = Decimal(NANO_PER_USD // 1_000_000)
_NANO: Final = Decimal(NANO_PER_USD)
# Wide enough that token counts times prices never round before the final quantize,
# whatever decimal context the calling thread has set.
_CTX: Final = Context(prec=60, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's prices in USD per million tokens (``per_request`` in USD per call).

    ``cached_input`` (cache reads) and ``cache_write`` fall back to ``input`` when None;
    ``reasoning`` falls back to ``output`` (few providers price reasoning apart).
    ``tiers`` holds long-context prices: ``(threshold, price)`` pairs, ascending, where
    ``price`` replaces this one for requests whose input tokens exceed ``threshold``.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    per_request: Decimal | None = None
    reasoning: Decimal | None = None
    tiers: tuple[tuple[int, ModelPrice], ...] = ()

    def at(self, input_tokens: int) -> ModelPrice:
        """The price that applies to a request with this many input tokens (cache included).

        Tiers are cliffs, as the providers bill them: past a threshold every token of the
        request pays the tier's price, not only those above it.
        """
        for threshold, price in reversed(self.tiers):
            if input_tokens > threshold:
                return price
        return self

    def cost_nano(self, usage: Usage) -> int:
        """Exact cost of a finished call in nano-USD, rounded half up."""
        inp = max(int(usage.input_tokens), 0)
        cached = max(int(usage.cached_input_tokens), 0)
        written = max(int(usage.cache_write_tokens), 0)
        out = max(int(usage.output_tokens), 0)
        reasoning = min(max(int(usage.reasoning_tokens), 0), out)
        p = self.at(inp)
        fresh = max(inp - cached - written, 0)  # inconsistent usage: trust the parts
        mul, add = _CTX.multiply, _CTX.add
        # Explicit context: exact whatever precision the calling thread has set.
        mtok = add(mul(fresh, p.input), mul(out, p.output))
        if cached:
            mtok = add(mtok, mul(cached, p.input if p.cached_input is None else p.cached_input))
        if written:
            mtok = add(mtok, mul(written, p.input if p.cache_write is None else p.cache_write))
        if reasoning and p.reasoning is not None:
            mtok = add(mtok, mul(reasoning, _CTX.subtract(p.reasoning, p.output)))
        return _to_nano(mtok, p.per_request)

    def estimate_nano(self, input_tokens: int, output_tokens: int) -> int:
        """Reservation before the call: every input token at the uncached price.

        Cache reads can only lower the bill; a cache-write premium (Anthropic's 1.25×) is
        not reserved, since most requests write little and the upstream's usage settles it.
        """
        inp = max(int(input_tokens), 0)
        out = max(int(output_tokens), 0)
        p = self.at(inp)
        out_price = p.output if p.reasoning is None else max(p.output, p.reasoning)
        mul = _CTX.multiply
        return _to_nano(_CTX.add(mul(inp, p.input), mul(out, out_price)), p.per_request)


def _to_nano(mtok_usd: Decimal, per_request: Decimal | None) -> int:
    nano = _CTX.multiply(mtok_usd, _NANO_PER_MTOK_UNIT)
    if per_request:
        nano = _CTX.add(nano, _CTX.multiply(per_request, _NANO))
    return max(int(_CTX.quantize(nano, _ONE)), 0)


# --- genai-prices ----------------------------------------------------------------------------

_O_SERIES = re.compile(r"o\d")
_OPENAI_PREFIXES: Final = (
    "gpt-",
    "chatgpt-",
    "text-embedding-",
    "davinci",
    "babbage",
    "omni-moderation",
    "text-moderation",
    "whisper",
    "tts-",
    "dall-e",
    "codex-",
    "computer-use",
)


def _infer_provider(model: str) -> str | None:
    """genai-prices only matches some names to a provider by itself (not text-embedding-*)."""
    if "claude" in model:
        return "anthropic"
    if model.startswith(_OPENAI_PREFIXES) or _O_SERIES.match(model):
        return "openai"
    return None


def _genai_lookup(provider: str | None, model_ref: str) -> Any:
    """genai-prices' model entry (a ``ModelInfo``); raises LookupError when unknown."""
    from genai_prices import data_snapshot

    return data_snapshot.get_snapshot().find_provider_model(model_ref, None, provider, None)[1]


def _dec(value: object) -> Decimal | None:
    return value if isinstance(value, Decimal) else None


def _from_genai(gp: Any) -> ModelPrice | None:
    """Convert a genai-prices ``ModelPrice`` (Decimals or ``TieredPrices``) into ours."""
    fields = {
        "input": getattr(gp, "input_mtok", None),
        "output": getattr(gp, "output_mtok", None),
        "cached_input": getattr(gp, "cache_read_mtok", None),
        "cache_write": getattr(gp, "cache_write_mtok", None),
        "reasoning": getattr(gp, "output_reasoning_mtok", None),
    }
    if fields["input"] is None and fields["output"] is None:
        # No token prices at all: free per genai-prices, or billed in units we do not
        # track (characters, audio hours, pages). Unknown is the safe answer for a budget.
        return None
    thresholds: set[int] = set()
    for v in fields.values():
        thresholds.update(int(t.start) for t in getattr(v, "tiers", ()))

    def value_at(v: object, threshold: int | None) -> Decimal | None:
        if v is None or isinstance(v, Decimal):
            return v
        chosen = _dec(getattr(v, "base", None))
        if threshold is not None:
            for t in getattr(v, "tiers", ()):
                if int(t.start) <= threshold:
                    chosen = _dec(t.price)
        return chosen

    kcount = _dec(getattr(gp, "requests_kcount", None))
    per_request = _CTX.divide(kcount, 1000) if kcount else None

    def build(threshold: int | None) -> ModelPrice:
        return ModelPrice(
            input=value_at(fields["input"], threshold) or _ZERO,
            output=value_at(fields["output"], threshold) or _ZERO,
            cached_input=value_at(fields["cached_input"], threshold),
            cache_write=value_at(fields["cache_write"], threshold),
            reasoning=value_at(fields["reasoning"], threshold),
            per_request=per_request,
        )

    base = build(None)
    if not thresholds:
        return base
    return replace(base, tiers=tuple((t, build(t)) for t in sorted(thresholds)))


class Pricer:
    """Model prices: operator overrides first, then genai-prices' bundled snapshot.

    Override keys are exact model names or ``fnmatch`` patterns, matched case-insensitively
    against the name as sent and without its ``provider/`` prefix; an exact name wins over
    any pattern and a longer pattern over a shorter one.

    genai-prices answers are memoized per (provider, model) for ``ttl`` seconds, so a price
    that changes on a date (genai-prices knows some) is picked up by a running gateway.
    Only standard prices are used: no batch, flex or priority variants.

    When a provider is given but genai-prices does not know it (an upstream's own name, say),
    or does not list the model under it, the lookup falls back to the provider the name
    implies: ``openai/`` prefixes, ``claude*`` -> anthropic, ``gpt-*``/``o1..o4``/
    ``text-embedding-*`` -> openai, then genai-prices' own matching.
    """

    _MEMO_MAX: Final = 8192

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        ttl: float = 3600.0,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._exact: dict[str, ModelPrice] = {}
        patterns: list[tuple[str, ModelPrice]] = []
        for key, price in (overrides or {}).items():
            k = key.strip().lower()
            if any(ch in k for ch in "*?["):
                patterns.append((k, price))
            else:
                self._exact[k] = price
        patterns.sort(key=lambda kp: -len(kp[0]))  # stable: equal lengths keep config order
        self._patterns = tuple(patterns)
        self._memo: dict[tuple[str | None, str], tuple[ModelPrice | None, float]] = {}
        self._windows: dict[tuple[str | None, str], int | None] = {}
        self._lock = threading.Lock()

    # -- lookup --

    def price_for(self, model: str, provider: str | None = None) -> ModelPrice | None:
        """The model's price, or None when neither the overrides nor genai-prices know it."""
        key = (provider, model)
        hit = self._memo.get(key)
        now = self._clock.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        price = self._resolve(model, provider)
        with self._lock:
            if len(self._memo) >= self._MEMO_MAX:
                self._memo.clear()  # names come from requests: keep the memo bounded
            self._memo[key] = (price, now + self._ttl)
        return price

    def known(self, model: str, provider: str | None = None) -> bool:
        return self.price_for(model, provider) is not None

    def context_window(self, model: str, provider: str | None = None) -> int | None:
        """The most input tokens one call to ``model`` can have, per genai-prices; None
        when it does not say."""
        key = (provider, model)
        if key in self._windows:
            return self._windows[key]
        name = model.strip().lower() if isinstance(model, str) else ""
        bare = name.rsplit("/", 1)[1] if "/" in name else name
        window: int | None = None
        for prov, ref in self._attempts(name, bare, provider) if name else ():
            try:
                value = getattr(_genai_lookup(prov, ref), "context_window", None)
            except LookupError:
                continue
            if isinstance(value, int) and value > 0:
                window = value
            break
        with self._lock:
            if len(self._windows) >= self._MEMO_MAX:
                self._windows.clear()
            self._windows[key] = window
        return window

    def _resolve(self, model: str, provider: str | None) -> ModelPrice | None:
        name = model.strip().lower() if isinstance(model, str) else ""
        if not name:
            return None
        bare = name.rsplit("/", 1)[1] if "/" in name else name
        override = self._override(name, bare)
        if override is not None:
            return override
        when = datetime.fromtimestamp(self._clock.now(), UTC)
        for prov, ref in self._attempts(name, bare, provider):
            try:
                info = _genai_lookup(prov, ref)
            except LookupError:
                continue
            try:
                return _from_genai(info.get_prices(when))
            except Exception:  # a malformed snapshot entry must not break billing
                return None
        return None

    def _override(self, name: str, bare: str) -> ModelPrice | None:
        if not self._exact and not self._patterns:
            return None
        for candidate in (name, bare):
            if candidate in self._exact:
                return self._exact[candidate]
        for pattern, price in self._patterns:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(bare, pattern):
                return price
        return None

    @staticmethod
    def _attempts(name: str, bare: str, provider: str | None) -> list[tuple[str | None, str]]:
        attempts: list[tuple[str | None, str]] = []
        if provider:
            prov = provider.strip().lower()
            attempts += [(prov, name), (prov, bare)]
        if "/" in name:
            head, rest = name.split("/", 1)
            attempts.append((head, rest))
            attempts.append((head, bare))
        inferred = _infer_provider(bare)
        if inferred:
            attempts.append((inferred, bare))
        attempts += [(None, bare), (None, name)]
        return list(dict.fromkeys(attempts))  # drop repeats, keep order

    # -- costs --

    def cost_nano(self, model: str, usage: Usage, provider: str | None = None) -> int | None:
        """Exact cost in nano-USD of a finished call; None for an unknown model.

        The long-context tier is chosen by the request's input tokens, cache included.
        """
        price = self.price_for(model, provider)
        return None if price is None else price.cost_nano(usage)

    def estimate_nano(
        self, model: str, input_tokens: int, output_tokens: int, provider: str | None = None
    ) -> int | None:
        """Worst-case cost for a reservation: no cache discount; None for an unknown model."""
        price = self.price_for(model, provider)
        return None if price is None else price.estimate_nano(input_tokens, output_tokens)


# --- configuration -----------------------------------------------------------------------

_OVERRIDE_KEYS: Final = ("input", "output", "cached_input", "cache_write", "per_request")


def _price_value(key: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"price {key!r} must be a number, got {value!r}")
    try:
        # Through str so that 2.5 means Decimal("2.5"), not the binary float's expansion.
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValueError(f"price {key!r} is not a number: {value!r}") from exc
    if not d.is_finite() or d < 0:
        raise ValueError(f"price {key!r} must be a finite, non-negative number, got {value!r}")
    return d


def parse_price_override(d: Mapping[str, Any]) -> ModelPrice:
    """A ``ModelPrice`` from configuration, e.g. ``{"input": 2.5, "output": 10}``.

    Keys: ``input`` and ``output`` (required; USD per million tokens; use 0 for an
    embedding model's output), ``cached_input`` and ``cache_write`` (optional, same unit;
    default to ``input``), ``per_request`` (optional, USD per call). Unknown keys are
    rejected so that a typo cannot silently make something free.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"a price must be a mapping, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in _OVERRIDE_KEYS)
    if unknown:
        raise ValueError(f"unknown price keys {unknown}; expected some of {list(_OVERRIDE_KEYS)}")
    missing = [k for k in ("input", "output") if d.get(k) is None]
    if missing:
        raise ValueError(f"price needs {missing}")

    def opt(key: str) -> Decimal | None:
        v = d.get(key)
        return None if v is None else _price_value(key, v)

    return ModelPrice(
        input=_price_value("input", d["input"]),
        output=_price_value("output", d["output"]),
        cached_input=opt("cached_input"),
        cache_write=opt("cache_write"),
        per_request=opt("per_request"),
    )
