"""What a call costs, in whole nano-dollars, from genai-prices' offline snapshot.

Every price is a ``Decimal`` in USD per million tokens (per call for tool fees) and every
cost an exact ``int`` of nano-USD, so ledgers and budgets never drift. Looking a model up in
genai-prices costs about 200 µs, so lookups (hits and misses) are memoized per (provider,
model); operators can override or add prices per exact model name or glob pattern.

Usage follows tokenstile's (OpenAI's) convention: ``input_tokens`` includes cache reads,
cache writes and input audio; ``output_tokens`` includes reasoning and output audio.
"""

from __future__ import annotations

import bisect
import fnmatch
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any, Final

from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.model_names import is_openai_model
from tokenstile.types import NANO_PER_USD, PriceTerms, Usage

__all__ = ["Adjustment", "ModelPrice", "PriceVersions", "Pricer", "parse_price_override",
           "upstream_provider"]

_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
# Nano-USD per (USD per million tokens × tokens) = 1e9 / 1e6.
_NANO_PER_MTOK_UNIT: Final = NANO_PER_USD // 1_000_000
# Wide enough that token counts times prices never round before the final quantize,
# whatever decimal context the calling thread has set.
_CTX: Final = Context(prec=60, rounding=ROUND_HALF_UP)
_NO_TERMS: Final = PriceTerms()
# Tiers a request leaves to the provider: it may serve them at any tier the model has.
_OPEN_TIERS: Final = frozenset({"auto", ""})


def _or(*prices: int | None) -> int:
    """The first price that is set (the last one always is)."""
    for price in prices:
        if price is not None:
            return price
    raise AssertionError("no price")  # pragma: no cover - callers end with a set price


# The prices of a ``ModelPrice``, each as an exact integer: the price times ``scale``, the
# power of ten that makes every one of them whole. Costs are computed with them in integer
# arithmetic (exact, and several times faster than with Decimals) and rounded once.
_PRICE_FIELDS: Final = ("input", "output", "cached_input", "cache_write", "per_request",
                        "reasoning", "cache_write_1h", "input_audio", "output_audio",
                        "cached_audio_input", "web_search", "file_search")


@dataclass(frozen=True, slots=True)
class _Whole:
    scale: int
    input: int
    output: int
    cached_input: int | None
    cache_write: int | None
    per_request: int | None
    reasoning: int | None
    cache_write_1h: int | None
    input_audio: int | None
    output_audio: int | None
    cached_audio_input: int | None
    web_search: int | None
    file_search: int | None


def _whole(price: ModelPrice) -> _Whole:
    # Decimal(): a price given as an int (as Decimal arithmetic accepts one) is exact too.
    values = [None if v is None else Decimal(v)
              for v in (getattr(price, name) for name in _PRICE_FIELDS)]
    digits = max([0, *(-int(v.as_tuple().exponent) for v in values if v is not None)])
    ints = [None if v is None else int(v.scaleb(digits, _CTX)) for v in values]
    return _Whole(10 ** digits, ints[0] or 0, ints[1] or 0, *ints[2:])


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's prices in USD per million tokens (``per_request``, ``web_search`` and
    ``file_search`` in USD per call).

    ``cached_input`` (cache reads) and ``cache_write`` fall back to ``input`` when None,
    ``cache_write_1h`` to ``cache_write``; ``reasoning`` falls back to ``output`` (few
    providers price reasoning apart); ``input_audio`` and ``output_audio`` to ``input`` and
    ``output``; ``cached_audio_input`` (audio cache reads) to ``input_audio``, and for a
    model without audio prices to ``cached_input`` (its audio is billed as text).
    ``tiers`` holds long-context prices: ``(threshold, price)`` pairs, ascending, where
    ``price`` replaces this one for requests whose input tokens exceed ``threshold``.
    ``service_tiers`` holds the prices of other service tiers (``flex``, ``priority``…),
    each a whole ``ModelPrice`` that replaces this one for a call served at that tier.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    per_request: Decimal | None = None
    reasoning: Decimal | None = None
    tiers: tuple[tuple[int, ModelPrice], ...] = ()
    cache_write_1h: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    cached_audio_input: Decimal | None = None
    web_search: Decimal | None = None
    file_search: Decimal | None = None
    service_tiers: tuple[tuple[str, ModelPrice], ...] = ()
    _whole: _Whole = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_whole", _whole(self))

    def at(self, input_tokens: int) -> ModelPrice:
        """The price that applies to a request with this many input tokens (cache included).

        Tiers are cliffs, as the providers bill them: past a threshold every token of the
        request pays the tier's price, not only those above it.
        """
        for threshold, price in reversed(self.tiers):
            if input_tokens > threshold:
                return price
        return self

    def for_tier(self, service_tier: str | None) -> ModelPrice:
        """The price of a call served at ``service_tier``; this one for a tier without prices
        of its own (``default``, ``standard``, ``scale``, or one the price table lacks)."""
        if service_tier and self.service_tiers:
            name = service_tier.strip().lower()
            for tier, price in self.service_tiers:
                if tier == name:
                    return price
        return self

    def cost_nano(self, usage: Usage, service_tier: str | None = None) -> int:
        """Exact cost of a finished call in nano-USD, rounded half up.

        Priced at the tier the usage names (``usage.service_tier``), else ``service_tier``.
        """
        inp = max(int(usage.input_tokens), 0)
        cached = max(int(usage.cached_input_tokens), 0)
        written = max(int(usage.cache_write_tokens), 0)
        written_1h = min(max(int(usage.cache_write_1h_tokens), 0), written)
        audio_in = max(int(usage.input_audio_tokens), 0)
        cached_audio = min(max(int(usage.cached_audio_tokens), 0), cached, audio_in)
        out = max(int(usage.output_tokens), 0)
        audio_out = min(max(int(usage.output_audio_tokens), 0), out)
        reasoning = min(max(int(usage.reasoning_tokens), 0), out - audio_out)
        p = self.for_tier(usage.service_tier or service_tier).at(inp)._whole
        fresh_audio = audio_in - cached_audio
        # Inconsistent usage (parts larger than the whole): trust the parts.
        fresh = max(inp - cached - written - fresh_audio, 0)
        mtok = fresh * p.input + (out - audio_out - reasoning) * p.output
        if cached > cached_audio:
            mtok += (cached - cached_audio) * _or(p.cached_input, p.input)
        if fresh_audio:
            mtok += fresh_audio * _or(p.input_audio, p.input)
        if cached_audio:
            mtok += cached_audio * _or(p.cached_audio_input, p.input_audio, p.cached_input,
                                       p.input)
        if written > written_1h:
            mtok += (written - written_1h) * _or(p.cache_write, p.input)
        if written_1h:
            mtok += written_1h * _or(p.cache_write_1h, p.cache_write, p.input)
        if reasoning:
            mtok += reasoning * _or(p.reasoning, p.output)
        if audio_out:
            mtok += audio_out * _or(p.output_audio, p.output)
        return _to_nano(mtok, _fees(p, usage.web_search_requests, usage.file_search_calls),
                        p.scale)

    def estimate_nano(self, input_tokens: int, output_tokens: int, *,
                      terms: PriceTerms | None = None) -> int:
        """Reservation before the call: every input token at the dearest input price the
        request may pay, every output token at the dearest output price.

        Cache reads can only lower the bill. A cache write is reserved only when the request
        asks for caching (``terms.cache_write``): then all its input may be written, at the
        premium of the longest lifetime asked for. A request that leaves its service tier to
        the provider (no tier, or ``auto``) is reserved at the priciest tier the model has:
        the provider serves ``auto`` at the tier its account is set to, which may be
        ``priority``. Tool fees are reserved for the calls the request allows at most.
        Without ``terms``: text only, at the standard tier.
        """
        if terms is None:
            return self._estimate(input_tokens, output_tokens, _NO_TERMS)
        tier = (terms.service_tier or "").strip().lower()
        if tier in _OPEN_TIERS:
            candidates: Iterable[ModelPrice] = (self, *(p for _, p in self.service_tiers))
        else:
            candidates = (self.for_tier(tier),)
        return max(price._estimate(input_tokens, output_tokens, terms) for price in candidates)

    def _estimate(self, input_tokens: int, output_tokens: int, terms: PriceTerms) -> int:
        inp = max(int(input_tokens), 0)
        out = max(int(output_tokens), 0)
        p = self.at(inp)._whole
        in_price = p.input
        if terms.cache_write == "1h":
            in_price = max(in_price, _or(p.cache_write_1h, p.cache_write, p.input))
        elif terms.cache_write:
            in_price = max(in_price, _or(p.cache_write, p.input))
        if terms.audio_input and p.input_audio is not None:
            in_price = max(in_price, p.input_audio)
        out_price = p.output if p.reasoning is None else max(p.output, p.reasoning)
        if terms.audio_output and p.output_audio is not None:
            out_price = max(out_price, p.output_audio)
        return _to_nano(inp * in_price + out * out_price,
                        _fees(p, terms.web_searches, terms.file_searches), p.scale)

    def scaled(self, factor: Decimal) -> ModelPrice:
        """Every price (tiers and service tiers included) times ``factor``."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Decimal):
                changes[f.name] = _CTX.multiply(value, factor)
        changes["tiers"] = tuple((t, p.scaled(factor)) for t, p in self.tiers)
        changes["service_tiers"] = tuple((n, p.scaled(factor)) for n, p in self.service_tiers)
        return replace(self, **changes)

    def unpriced(self, usage: Usage) -> list[str]:
        """What in ``usage`` this price table has no price for (billed at nothing)."""
        missing = []
        if usage.web_search_requests > 0 and self.web_search is None:
            missing.append("web_search")
        if usage.file_search_calls > 0 and self.file_search is None:
            missing.append("file_search")
        return missing


def _fees(p: _Whole, web_searches: int, file_searches: int) -> int:
    """USD charged per call (times ``p.scale``): the request itself and its searches."""
    fees = p.per_request or 0
    if web_searches > 0 and p.web_search:
        fees += int(web_searches) * p.web_search
    if file_searches > 0 and p.file_search:
        fees += int(file_searches) * p.file_search
    return fees


def _to_nano(mtok_usd: int, per_call_usd: int, scale: int) -> int:
    """Nano-USD, rounded half up, of USD-per-million-tokens × tokens plus USD per call, both
    times ``scale``."""
    nano, rest = divmod(mtok_usd * _NANO_PER_MTOK_UNIT + per_call_usd * NANO_PER_USD, scale)
    if 2 * rest >= scale:
        nano += 1
    return max(nano, 0)


# --- genai-prices ----------------------------------------------------------------------------

def _infer_provider(model: str) -> str | None:
    """genai-prices only matches some names to a provider by itself (not text-embedding-*)."""
    if "claude" in model:
        return "anthropic"
    if is_openai_model(model, media=True):
        return "openai"
    return None


def _snapshot() -> Any:
    from genai_prices import data_snapshot

    return data_snapshot.get_snapshot()


def _genai_lookup(provider: str | None, model_ref: str) -> Any:
    """genai-prices' model entry (a ``ModelInfo``); raises LookupError when unknown."""
    return _snapshot().find_provider_model(model_ref, None, provider, None)[1]


def _genai_provider(provider: str) -> str | None:
    """genai-prices' own id for a provider name (``Anthropic`` -> ``anthropic``), or None."""
    from genai_prices.data_snapshot import find_provider_by_id

    found = find_provider_by_id(_snapshot().providers, provider)
    return None if found is None else str(found.id)


_KIND_PROVIDERS: Final = {"anthropic": "anthropic", "azure": "azure", "bedrock": "aws",
                          "gemini": "google"}


def upstream_provider(kind: str, base_url: str, configured: str | None = None) -> str | None:
    """Whose prices an upstream's calls are billed at (a genai-prices provider id).

    ``configured`` (the upstream's ``provider`` setting) wins; else the provider whose API
    address ``base_url`` is (``https://api.groq.com/…`` -> groq), as genai-prices knows
    them; else the ``kind`` when it names one provider (anthropic, azure, bedrock: aws,
    gemini: google).
    None for an OpenAI-compatible server at an address genai-prices does not know (vLLM, a
    proxy): its models are then priced by what their names say.
    """
    if configured:
        return configured.strip().lower()
    for entry in _snapshot().providers:
        pattern = getattr(entry, "api_pattern", None)
        if pattern and re.match(pattern, base_url):
            return str(entry.id)
    return _KIND_PROVIDERS.get(kind)


def _dec(value: object) -> Decimal | None:
    return value if isinstance(value, Decimal) else None


_GENAI_KEYS: Final = (
    ("input", ("input_mtok",)),
    ("output", ("output_mtok",)),
    ("cached_input", ("cache_read_mtok",)),
    ("cache_write", ("cache_write_mtok", "cache_write_5m_mtok")),
    ("cache_write_1h", ("cache_write_1h_mtok",)),
    ("reasoning", ("output_reasoning_mtok",)),
    ("input_audio", ("input_audio_mtok",)),
    ("output_audio", ("output_audio_mtok",)),
    ("cached_audio_input", ("cache_audio_read_mtok",)),
)


def _per_call(gp: Any, key: str) -> Decimal | None:
    """A genai-prices price per thousand calls, as USD per call."""
    kcount = _dec(getattr(gp, key, None))
    return _CTX.divide(kcount, 1000) if kcount else None


def _from_genai(gp: Any) -> ModelPrice | None:
    """Convert a genai-prices ``ModelPrice`` (Decimals or ``TieredPrices``) into ours."""
    fields: dict[str, Any] = {}
    for ours, theirs in _GENAI_KEYS:
        fields[ours] = next((v for key in theirs if (v := getattr(gp, key, None)) is not None),
                            None)
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

    def build(threshold: int | None) -> ModelPrice:
        def at(name: str) -> Decimal | None:
            return value_at(fields[name], threshold)

        return ModelPrice(
            input=at("input") or _ZERO,
            output=at("output") or _ZERO,
            cached_input=at("cached_input"),
            cache_write=at("cache_write"),
            cache_write_1h=at("cache_write_1h"),
            reasoning=at("reasoning"),
            input_audio=at("input_audio"),
            output_audio=at("output_audio"),
            cached_audio_input=at("cached_audio_input"),
            per_request=_per_call(gp, "requests_kcount"),
            web_search=_per_call(gp, "web_searches_kcount"),
            file_search=_per_call(gp, "storage_searches_kcount"),
        )

    base = build(None)
    if not thresholds:
        return base
    return replace(base, tiers=tuple((t, build(t)) for t in sorted(thresholds)))


def _service_tier_names(info: Any) -> list[str]:
    """The service tiers a genai-prices model entry has variant prices for."""
    names = {str(v.when["service_tier"]) for v in getattr(info, "price_variants", None) or ()
             if set(getattr(v, "when", {})) == {"service_tier"}}
    return sorted(names)


def _from_genai_info(info: Any, when: datetime) -> ModelPrice | None:
    """A model entry's standard price, with its service tiers' prices (those in force at
    ``when`` that differ from the standard one)."""
    base = _from_genai(info.get_prices(when))
    if base is None:
        return None
    variants: list[tuple[str, ModelPrice]] = []
    for tier in _service_tier_names(info):
        price = _from_genai(info.get_prices(when, {"service_tier": tier}))
        if price is not None and price != base:
            variants.append((tier.lower(), price))
    return replace(base, service_tiers=tuple(variants)) if variants else base


def next_listed_change(info: Any, now: float) -> float | None:
    """When a genai-prices entry next changes price after ``now``: a dated price taking
    effect, or a daily window (DeepSeek's off-peak hours) opening or closing; None when
    its price does not change."""
    prices = getattr(info, "prices", None)
    today = datetime.fromtimestamp(now, UTC).date()
    changes: list[float] = []
    for item in prices if isinstance(prices, list) else ():
        constraint = getattr(item, "constraint", None)
        start = getattr(constraint, "start_date", None)
        if isinstance(start, date):
            ts = start.timestamp() if isinstance(start, datetime) else \
                datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp()
            if ts > now:
                changes.append(ts)
        for edge in (getattr(constraint, "start_time", None),
                     getattr(constraint, "end_time", None)):
            if isinstance(edge, time):
                zoned = edge if edge.tzinfo is not None else edge.replace(tzinfo=UTC)
                changes.extend(
                    ts for day in (-1, 0, 1)
                    if (ts := datetime.combine(today + timedelta(days=day), zoned).timestamp())
                    > now)
    return min(changes, default=None)


# A genai-prices entry not looked up yet (None: looked up, and unknown).
_LOOK_UP: Final[Any] = object()

# (effective from, price) pairs, ascending; -inf: in force from the beginning.
PriceVersions = tuple[tuple[float, ModelPrice], ...]


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A negotiated discount: matching models cost ``factor`` times their price from
    ``start`` until ``end`` (seconds since the epoch)."""

    pattern: str
    factor: Decimal
    provider: str | None = None
    start: float = -math.inf
    end: float = math.inf

    def applies(self, candidates: Sequence[str], provider: str | None, at: float) -> bool:
        if not self.start <= at < self.end:
            return False
        if self.provider is not None and self.provider != provider:
            return False
        return any(fnmatch.fnmatchcase(c, self.pattern) for c in candidates)


def _version_at(versions: PriceVersions, at: float) -> ModelPrice | None:
    """The version in force at ``at``; None before the first one."""
    chosen = None
    for start, price in versions:
        if start > at:
            break
        chosen = price
    return chosen


class Pricer:
    """Model prices: operator overrides first, then genai-prices' bundled snapshot.

    Override keys are exact model names or ``fnmatch`` patterns, matched case-insensitively
    against ``provider/name`` (when the provider is known), the name as sent and the name
    without its ``provider/`` prefix; an exact name wins over any pattern and a longer
    pattern over a shorter one.

    genai-prices answers are memoized per (provider, model) for ``ttl`` seconds, so a price
    that changes on a date (genai-prices knows some) is picked up by a running gateway. Each
    answer carries the model's service-tier prices (``flex``, ``priority``…); batch prices
    are those of ``tokenstile.media`` (half the standard ones).

    A model is priced at its provider's prices (``provider``: the upstream that served it,
    see ``upstream_provider``): when genai-prices knows that provider, only its list (and the
    providers it resells, as genai-prices records them) is searched, so a model another
    provider also lists at another price is never billed at that price. Without a provider,
    or with one genai-prices does not know, the name decides: ``openai/`` prefixes,
    ``claude*`` -> anthropic, ``gpt-*``/``o1..o4``/``text-embedding-*`` -> openai, then
    genai-prices' own matching.

    Prices are versioned: an override may be a list of (effective from, price) versions,
    and ``adjustments`` (negotiated discounts) apply from and until given times; a price is
    the one in force at the time asked for (``at``, default now). Memoized answers never
    outlive the next change of version.
    """

    _MEMO_MAX: Final = 8192

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice | PriceVersions] | None = None,
        *,
        adjustments: Sequence[Adjustment] = (),
        clock: Clock = SYSTEM_CLOCK,
        ttl: float = 3600.0,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._exact: dict[str, PriceVersions] = {}
        patterns: list[tuple[str, PriceVersions]] = []
        edges: set[float] = set()
        for key, entry in (overrides or {}).items():
            versions: PriceVersions = ((-math.inf, entry),) if isinstance(entry, ModelPrice) \
                else tuple(sorted(entry, key=lambda v: v[0]))
            edges.update(start for start, _ in versions if math.isfinite(start))
            k = key.strip().lower()
            if any(ch in k for ch in "*?["):
                patterns.append((k, versions))
            else:
                self._exact[k] = versions
        patterns.sort(key=lambda kp: -len(kp[0]))  # stable: equal lengths keep config order
        self._patterns = tuple(patterns)
        self.adjustments = tuple(adjustments)
        for adj in self.adjustments:
            edges.update(t for t in (adj.start, adj.end) if math.isfinite(t))
        self._edges = tuple(sorted(edges))
        self._memo: dict[tuple[str | None, str, int], tuple[ModelPrice | None, float]] = {}
        self._windows: dict[tuple[str | None, str], int | None] = {}
        self._raw: dict[tuple[str, str | None, str], tuple[Any, float]] = {}
        self._lock = threading.Lock()

    @property
    def edges(self) -> tuple[float, ...]:
        """The times at which a configured price version or adjustment starts or ends."""
        return self._edges

    # -- lookup --

    def price_for(self, model: str, provider: str | None = None, *,
                  service_tier: str | None = None, at: float | None = None
                  ) -> ModelPrice | None:
        """The model's price in force at ``at`` (default now; at ``service_tier`` when
        given), or None when neither the overrides nor genai-prices know it."""
        now = self._clock.now()
        when = now if at is None else at
        segment = bisect.bisect_right(self._edges, when) if self._edges else 0
        if abs(when - now) > 86_400 or (self._edges and segment != bisect.bisect_right(
                self._edges, now)):
            price = self._resolve(model, provider, when)  # the past: not memoized
        else:
            key = (provider, model, segment)
            hit = self._memo.get(key)
            mono = self._clock.monotonic()
            if hit is not None and hit[1] > mono:
                price = hit[0]
            else:
                info = _LOOK_UP if self.override_versions(model, provider) else \
                    self.genai_info(model, provider)
                price = self._resolve(model, provider, when, info)
                expires = self._memo_until(now, mono, None if info is _LOOK_UP else info)
                if segment < len(self._edges):  # never past the next version's start
                    expires = min(expires, mono + max(self._edges[segment] - now, 0.0))
                with self._lock:
                    if len(self._memo) >= self._MEMO_MAX:
                        self._memo.clear()  # names come from requests: keep it bounded
                    self._memo[key] = (price, expires)
        if price is None or service_tier is None:
            return price
        return price.for_tier(service_tier)

    def genai_prices(self, model: str, provider: str | None = None) -> Any | None:
        """genai-prices' own price entry for ``model`` at the clock's date (found as
        ``price_for`` finds it, overrides aside), for units ``ModelPrice`` has no field for
        (images, audio hours, characters: ``tokenstile.media``); None when unknown."""
        key = ("genai", provider, model)
        mono = self._clock.monotonic()
        hit = self._raw.get(key)
        if hit is not None and hit[1] > mono:
            return hit[0]
        name = model.strip().lower() if isinstance(model, str) else ""
        bare = name.rsplit("/", 1)[1] if "/" in name else name
        known = _genai_provider(provider) if provider else None
        now = self._clock.now()
        found: Any = None
        info: Any = None
        for prov, ref in self._attempts(name, bare, provider, known) if name else ():
            try:
                info = _genai_lookup(prov, ref)
                found = info.get_prices(datetime.fromtimestamp(now, UTC))
            except LookupError:
                continue
            except Exception:  # a malformed snapshot entry must not break billing
                found = None
            break
        with self._lock:
            if len(self._raw) >= self._MEMO_MAX:
                self._raw.clear()
            self._raw[key] = (found, self._memo_until(now, mono, info))
        return found

    def _memo_until(self, now: float, mono: float, info: Any) -> float:
        """When (on the monotonic clock) a memoized price looked up at ``now`` expires: after
        the memo's time to live, and never past the next change genai-prices lists for
        ``info`` (its entry, None when unknown or overridden: ``next_listed_change``)."""
        expires = mono + self._ttl
        change = None if info is None else next_listed_change(info, now)
        if change is not None:
            expires = min(expires, mono + max(change - now, 0.0))
        return expires

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
        known = _genai_provider(provider) if provider else None
        for prov, ref in self._attempts(name, bare, provider, known) if name else ():
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

    def _resolve(self, model: str, provider: str | None, at: float,
                 info: Any = _LOOK_UP) -> ModelPrice | None:
        price = self.list_price(model, provider, at, info)
        if price is None or not self.adjustments:
            return price
        adj = self.adjustment_for(model, provider, at)
        return price if adj is None else price.scaled(adj.factor)

    def adjustment_for(self, model: str, provider: str | None, at: float) -> Adjustment | None:
        """The first adjustment that applies to ``model`` at ``at``."""
        name = model.strip().lower() if isinstance(model, str) else ""
        bare = name.rsplit("/", 1)[1] if "/" in name else name
        prov = (provider.strip().lower() if provider else None) or _infer_provider(bare)
        candidates = (name, bare)
        return next((a for a in self.adjustments if a.applies(candidates, prov, at)), None)

    def list_price(self, model: str, provider: str | None, at: float,
                   info: Any = _LOOK_UP) -> ModelPrice | None:
        """The price before adjustments: the override in force at ``at``, else
        genai-prices' price at that time (``info``: its entry, when already looked up)."""
        name = model.strip().lower() if isinstance(model, str) else ""
        if not name:
            return None
        bare = name.rsplit("/", 1)[1] if "/" in name else name
        override = self._override(name, bare, provider, at)
        if override is not None:
            return override
        return self.genai_price(model, provider, at, info)

    def genai_price(self, model: str, provider: str | None, at: float,
                    info: Any = _LOOK_UP) -> ModelPrice | None:
        """genai-prices' own price for the model at ``at`` (no override, no adjustment)."""
        if info is _LOOK_UP:
            info = self.genai_info(model, provider) if isinstance(model, str) else None
        if info is None:
            return None
        try:
            return _from_genai_info(info, datetime.fromtimestamp(at, UTC))
        except Exception:  # a malformed snapshot entry must not break billing
            return None

    def genai_info(self, model: str, provider: str | None) -> Any:
        """genai-prices' entry for the model (a ``ModelInfo``), or None."""
        name = model.strip().lower()
        if not name:
            return None
        bare = name.rsplit("/", 1)[1] if "/" in name else name
        prov = _genai_provider(provider) if provider else None
        for attempt_provider, ref in self._attempts(name, bare, provider, prov):
            try:
                return _genai_lookup(attempt_provider, ref)
            except LookupError:
                continue
        return None

    def override_versions(self, model: str, provider: str | None = None) -> PriceVersions:
        """The configured versions that price ``model`` (empty when none does)."""
        name = model.strip().lower()
        bare = name.rsplit("/", 1)[1] if "/" in name else name
        return self._override_entry(name, bare, provider) or ()

    def _override_entry(self, name: str, bare: str, provider: str | None
                        ) -> PriceVersions | None:
        if not self._exact and not self._patterns:
            return None
        candidates: tuple[str, ...] = (name, bare)
        if provider:
            candidates = (f"{provider.strip().lower()}/{bare}", *candidates)
        for candidate in candidates:
            if candidate in self._exact:
                return self._exact[candidate]
        for pattern, versions in self._patterns:
            if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
                return versions
        return None

    def _override(self, name: str, bare: str, provider: str | None,
                  at: float) -> ModelPrice | None:
        versions = self._override_entry(name, bare, provider)
        return None if versions is None else _version_at(versions, at)

    @staticmethod
    def _attempts(name: str, bare: str, provider: str | None,
                  known: str | None) -> list[tuple[str | None, str]]:
        if known:
            # The provider that serves the call: its prices or none.
            return list(dict.fromkeys([(known, name), (known, bare)]))
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

    def cost_nano(self, model: str, usage: Usage, provider: str | None = None, *,
                  service_tier: str | None = None) -> int | None:
        """Exact cost in nano-USD of a finished call; None for an unknown model.

        Priced at the service tier the usage names (the provider's answer), else at
        ``service_tier`` (the tier asked for); the long-context tier is chosen by the
        request's input tokens, cache included.
        """
        price = self.price_for(model, provider)
        return None if price is None else price.cost_nano(usage, service_tier)

    def estimate_nano(
        self, model: str, input_tokens: int, output_tokens: int, provider: str | None = None,
        *, terms: PriceTerms | None = None,
    ) -> int | None:
        """Worst-case cost for a reservation (see ``ModelPrice.estimate_nano``); None for an
        unknown model. A call not billed by text tokens alone (``terms.media``: images,
        audio, batches) is priced by what it asks for (``tokenstile.media``)."""
        if terms is not None and terms.media is not None:
            return terms.media.worst_case_nano(self, model, provider, input_tokens,
                                               output_tokens)
        price = self.price_for(model, provider)
        return None if price is None else price.estimate_nano(input_tokens, output_tokens,
                                                              terms=terms)


# --- configuration -----------------------------------------------------------------------

_PRICE_KEYS: Final = ("input", "output", "cached_input", "cache_write", "cache_write_1h",
                      "input_audio", "output_audio", "cached_audio_input", "reasoning",
                      "per_request", "web_search", "file_search")
_OVERRIDE_KEYS: Final = (*_PRICE_KEYS, "service_tiers")


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


def _check_keys(d: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ValueError(f"unknown price keys {unknown}; expected some of {list(allowed)}")


def parse_price_override(d: Mapping[str, Any]) -> ModelPrice:
    """A ``ModelPrice`` from configuration, e.g. ``{"input": 2.5, "output": 10}``.

    Keys: ``input`` and ``output`` (required; USD per million tokens; use 0 for an
    embedding model's output); optional, same unit: ``cached_input`` and ``cache_write``
    (default to ``input``), ``cache_write_1h`` (default ``cache_write``), ``input_audio`` /
    ``output_audio`` (default ``input`` / ``output``), ``cached_audio_input`` (default
    ``input_audio``), ``reasoning`` (default ``output``); in USD per call: ``per_request``,
    ``web_search`` and ``file_search``. ``service_tiers`` maps a tier (``flex``,
    ``priority``…) to the prices that differ at that tier. Unknown keys are rejected so that
    a typo cannot silently make something free.
    """
    _check_keys(d, _OVERRIDE_KEYS, "a price")
    missing = [k for k in ("input", "output") if d.get(k) is None]
    if missing:
        raise ValueError(f"price needs {missing}")
    base = _with_prices(ModelPrice(input=_ZERO, output=_ZERO), d)
    tiers = d.get("service_tiers") or {}
    _check_keys(tiers, tuple(str(k) for k in tiers), "'service_tiers'")
    variants = []
    for tier, values in tiers.items():
        _check_keys(values, _PRICE_KEYS, f"service tier {tier!r}")
        variants.append((str(tier).strip().lower(), _with_prices(base, values)))
    return replace(base, service_tiers=tuple(variants)) if variants else base


def _with_prices(price: ModelPrice, d: Mapping[str, Any]) -> ModelPrice:
    """``price`` with the prices ``d`` names (and no others) replaced."""
    changes: dict[str, Any] = {key: _price_value(key, d[key]) for key in _PRICE_KEYS
                               if d.get(key) is not None}
    return replace(price, **changes)
