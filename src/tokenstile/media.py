"""Calls that are not billed by text tokens alone: images, audio, moderations and batches.

A request to one of these APIs carries a ``MediaAsk``: what it asks for, read from its body
before the call (how many images at which sizes and qualities, how long its audio is, how
many characters it speaks, what every line of a batch may cost). Admission reserves its
``worst_case_nano``; the answer's ``Usage`` (``images``, ``audio_ms``, ``characters``, image
and audio tokens) is priced by ``cost_nano``.

Prices come from genai-prices where it has them: the token prices of ``gpt-image-1``,
``gpt-4o-transcribe`` and ``gpt-4o-mini-tts`` (with its image input and image output prices),
``whisper-1`` per audio hour, ``tts-1`` and ``tts-1-hd`` per million characters. Where it has
none, the tables below, copied from OpenAI's pricing page
(https://platform.openai.com/docs/pricing, "Image generation" and "Transcription and
speech generation", as of 2026-12): DALL·E per image by quality and size, and the audio
prices genai-prices may lack. Batches are priced at half the standard prices, the discount
OpenAI and Anthropic both give their Batch APIs.

Worst cases that are not known exactly before the call are bounded by the constants below,
each with its reason: the tokens of an output image (OpenAI's table for ``gpt-image-1``), of
an input image, of a second of audio, of a second of transcript.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

from tokenstile.types import NANO_PER_USD, Usage

if TYPE_CHECKING:
    from tokenstile.prices import ModelPrice, Pricer

MediaKind = Literal["moderation", "image", "transcription", "speech", "file", "batch"]

_CTX: Final = Context(prec=60, rounding=ROUND_HALF_UP)
_MTOK: Final = Decimal(1_000_000)
_ZERO: Final = Decimal(0)
BATCH_DISCOUNT: Final = Decimal("0.5")

# USD per image, by (quality, size): OpenAI's pricing page. dall-e-2 has one quality.
PER_IMAGE: Final[dict[str, dict[tuple[str, str], Decimal]]] = {
    "dall-e-3": {
        ("standard", "1024x1024"): Decimal("0.040"),
        ("standard", "1024x1792"): Decimal("0.080"),
        ("standard", "1792x1024"): Decimal("0.080"),
        ("hd", "1024x1024"): Decimal("0.080"),
        ("hd", "1024x1792"): Decimal("0.120"),
        ("hd", "1792x1024"): Decimal("0.120"),
    },
    "dall-e-2": {
        ("standard", "256x256"): Decimal("0.016"),
        ("standard", "512x512"): Decimal("0.018"),
        ("standard", "1024x1024"): Decimal("0.020"),
    },
}
# Defaults of the per-image models when the request names none (OpenAI's API reference).
IMAGE_DEFAULTS: Final[dict[str, tuple[str, str]]] = {
    "dall-e-3": ("standard", "1024x1024"),
    "dall-e-2": ("standard", "1024x1024"),
}
# Output tokens of one image from the token-priced models (gpt-image-1 and its family), by
# (quality, size): OpenAI's table for gpt-image-1. ``auto`` (or nothing) may be any of them.
IMAGE_OUTPUT_TOKENS: Final[dict[tuple[str, str], int]] = {
    ("low", "1024x1024"): 272, ("low", "1024x1536"): 408, ("low", "1536x1024"): 400,
    ("medium", "1024x1024"): 1056, ("medium", "1024x1536"): 1584, ("medium", "1536x1024"): 1568,
    ("high", "1024x1024"): 4160, ("high", "1024x1536"): 6240, ("high", "1536x1024"): 6208,
}
# Input tokens reserved per image sent to an edit: a 2048×2048 image at high input fidelity
# is about 6,000 tokens; the margin covers larger ones (the usage the answer reports is
# what is billed).
IMAGE_INPUT_TOKENS: Final = 8_000
# Audio input tokens per second of audio (gpt-4o-transcribe is billed about 1,000 a minute,
# its $0.006/min at $6/M); reserved with a margin.
AUDIO_TOKENS_PER_S: Final = 20
# Transcript tokens per second of speech: fast speech is about 4 words, 6 tokens, a second.
TRANSCRIPT_TOKENS_PER_S: Final = 10
# Spoken characters per second at speed 1.0 at the slowest (typical speech is about 15): a
# bound on how long a text takes to say, so on the audio tokens it is billed.
SPOKEN_CHARS_PER_S: Final = 8
# Audio tokens per second of generated speech (gpt-4o-mini-tts: about 1,250 a minute, its
# $0.015/min at $12/M); reserved with a margin.
SPEECH_TOKENS_PER_S: Final = 25
# The audio prices genai-prices may lack (OpenAI's pricing page): USD per audio hour and
# per million characters.
PER_AUDIO_HOUR: Final[dict[str, Decimal]] = {"whisper-1": Decimal("0.36")}
PER_MILLION_CHARS: Final[dict[str, Decimal]] = {"tts-1": Decimal("15"),
                                               "tts-1-hd": Decimal("30")}


def _nano(usd: Decimal) -> int:
    return max(int(_CTX.quantize(_CTX.multiply(usd, NANO_PER_USD), Decimal(1))), 0)


def _dec(value: object) -> Decimal | None:
    return value if isinstance(value, Decimal) else None


def _bare(model: str) -> str:
    name = model.strip().lower()
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """A model's prices in units other than text tokens (None: it has no such price)."""

    per_image: dict[tuple[str, str], Decimal] | None = None
    per_audio_hour: Decimal | None = None
    per_million_chars: Decimal | None = None
    input_image: Decimal | None = None  # USD per million image tokens
    output_image: Decimal | None = None


def unit_prices(pricer: Pricer, model: str, provider: str | None) -> UnitPrices:
    """genai-prices' prices in other units for ``model``, else the tables above."""
    bare = _bare(model)
    raw = pricer.genai_prices(model, provider)

    def field(name: str) -> Decimal | None:
        return _dec(getattr(raw, name, None)) if raw is not None else None

    return UnitPrices(
        per_image=PER_IMAGE.get(bare),
        per_audio_hour=field("input_audio_hours") or field("audio_hours")
        or PER_AUDIO_HOUR.get(bare),
        per_million_chars=field("input_mchars") or PER_MILLION_CHARS.get(bare),
        input_image=field("input_image_mtok"),
        output_image=field("output_image_mtok"),
    )


def priced_apart(pricer: Pricer, model: str, provider: str | None = None) -> bool:
    """Whether ``model`` has a price in units other than tokens (per image, audio hour or
    character) or is a free moderation model: priced, though ``Pricer.known`` says not."""
    if "moderation" in _bare(model):
        return True
    units = unit_prices(pricer, model, provider)
    return units.per_image is not None or units.per_audio_hour is not None or \
        units.per_million_chars is not None


def image_output_tokens(quality: str, size: str) -> int:
    """Output tokens of one image at ``quality`` and ``size``: ``auto`` (or nothing) may be
    any of the table's; a quality it lacks is taken as ``high``, and a size it lacks
    (``2048x2048``) as the table's largest scaled by its area."""
    qualities = (quality,) if quality in ("low", "medium", "high") else ("high",) \
        if quality not in ("", "auto") else ("low", "medium", "high")
    known = ("1024x1024", "1024x1536", "1536x1024")
    most = max(IMAGE_OUTPUT_TOKENS[(q, s)] for q in qualities
               for s in ((size,) if size in known else known))
    width, _, height = size.lower().partition("x")
    if size in known or not (width.isdigit() and height.isdigit()):
        return most
    return max(most, -(-most * int(width) * int(height) // (1024 * 1536)))


def scaled(price: ModelPrice, factor: Decimal) -> ModelPrice:
    """Every price of ``price`` (tiers and service tiers too) times ``factor``."""
    changes: dict[str, Any] = {}
    for name in ("input", "output", "cached_input", "cache_write", "per_request", "reasoning",
                 "cache_write_1h", "input_audio", "output_audio", "cached_audio_input",
                 "web_search", "file_search"):
        value = getattr(price, name)
        if isinstance(value, Decimal):
            changes[name] = _CTX.multiply(value, factor)
    changes["tiers"] = tuple((t, scaled(p, factor)) for t, p in price.tiers)
    changes["service_tiers"] = tuple((n, scaled(p, factor)) for n, p in price.service_tiers)
    return replace(price, **changes)


def batch_price(pricer: Pricer, model: str, provider: str | None) -> ModelPrice | None:
    """The price of a call made through a Batch API: half the standard price."""
    price = pricer.price_for(model, provider)
    return None if price is None else scaled(price, BATCH_DISCOUNT)


@dataclass(frozen=True, slots=True)
class BatchLines:
    """What the lines of a batch input file may use: the ``endpoint`` they call, how many
    there are, their input and output caps summed, the largest input of one line (it picks
    the long-context price tier) and how many got the gateway's default cap."""

    endpoint: str
    lines: int
    input_tokens: int
    output_tokens: int
    max_line_input: int
    supplied_caps: int = 0


@dataclass(frozen=True, slots=True)
class MediaAsk:
    """What one request may be billed for, read from its body before the call.

    ``images``: images asked for (``n``); ``options``: the (quality, size) pairs they may be
    made at; ``input_images``: images sent to be edited; ``audio_ms``: the length of the
    audio sent (its worst case when it could not be read, ``audio_exact`` False);
    ``characters``: text to speak, at ``speed``. ``batch``: the lines of a batch's input
    file (a ``file`` upload costs nothing itself); ``upstream``: the upstream a batch must
    go to (the one holding its input file).
    """

    kind: MediaKind
    images: int = 0
    options: tuple[tuple[str, str], ...] = ()
    input_images: int = 0
    audio_ms: int = 0
    audio_exact: bool = False
    characters: int = 0
    speed: float = 1.0
    batch: BatchLines | None = None
    upstream: str = ""

    # -- before the call -------------------------------------------------------------------

    @property
    def free(self) -> bool:
        """Moderations (alone or as a batch) and file uploads cost nothing."""
        return self.kind in ("moderation", "file") or (
            self.batch is not None and self.batch.endpoint == "/v1/moderations")

    def _unit_cost(self, units: UnitPrices, images: int, audio_ms: int,
                   characters: int) -> int | None:
        """The cost at the per-image, per-audio-hour or per-million-characters price this
        kind of call is billed by, when the model has it; None when it has not."""
        if self.kind == "image" and units.per_image is not None:
            return _nano(_CTX.multiply(_per_image(units.per_image, self.options), images))
        if self.kind == "transcription" and units.per_audio_hour is not None:
            return _nano(_CTX.divide(_CTX.multiply(units.per_audio_hour, audio_ms), 3_600_000))
        if self.kind == "speech" and units.per_million_chars is not None:
            return _nano(_CTX.divide(_CTX.multiply(units.per_million_chars, characters), _MTOK))
        return None

    def worst_case_nano(self, pricer: Pricer, model: str, provider: str | None,
                        input_tokens: int, output_tokens: int) -> int | None:
        """The most this call may cost (None: no price is known for ``model``).

        ``input_tokens`` and ``output_tokens`` are the request's reserved input and output
        cap; every input token is priced at the dearest input price the call may pay
        (text, image or audio), every output token at the dearest output price.
        """
        if self.free:
            return 0
        if self.kind == "batch":
            price = batch_price(pricer, model, provider)
            if price is None or self.batch is None:
                return None
            # Every line at the tier of the largest one (no line passes its threshold).
            flat = replace(price.at(self.batch.max_line_input), tiers=())
            return flat.estimate_nano(input_tokens, output_tokens)
        units = unit_prices(pricer, model, provider)
        whole_seconds_ms = -(-self.audio_ms // 1000) * 1000  # audio is billed by the second
        by_unit = self._unit_cost(units, max(self.images, 1), whole_seconds_ms, self.characters)
        if by_unit is not None:
            return by_unit
        price = pricer.price_for(model, provider)
        if price is None:
            return None
        extra_in = units.input_image if self.kind == "image" else None
        extra_out = units.output_image if self.kind == "image" else None
        in_price = max(_prices(price.input, price.input_audio, extra_in))
        out_price = max(_prices(price.output, price.output_audio, extra_out))
        return _nano(_CTX.divide(_CTX.add(_CTX.multiply(input_tokens, in_price),
                                          _CTX.multiply(output_tokens, out_price)), _MTOK))

    # -- after the call --------------------------------------------------------------------

    def cost_nano(self, pricer: Pricer, model: str, provider: str | None,
                  usage: Usage) -> int | None:
        """What the call cost, from what its answer says it used (None: unpriced)."""
        if self.free:
            return 0
        if self.kind == "batch":
            price = batch_price(pricer, model, provider)
            return None if price is None else price.cost_nano(usage)
        units = unit_prices(pricer, model, provider)
        by_unit = self._unit_cost(units, usage.images, usage.audio_ms, usage.characters)
        if by_unit is not None:
            return by_unit
        price = pricer.price_for(model, provider)
        if price is None:
            return None
        if self.kind != "image":
            return price.cost_nano(usage)
        # Image tokens at the image prices (the text and image parts are apart).
        image_in = min(usage.input_image_tokens, usage.input_tokens)
        image_out = min(usage.output_image_tokens, usage.output_tokens)
        text_part = replace(usage, input_tokens=usage.input_tokens - image_in,
                            output_tokens=usage.output_tokens - image_out,
                            cached_input_tokens=min(usage.cached_input_tokens,
                                                    usage.input_tokens - image_in))
        total = _CTX.add(_CTX.multiply(image_in, units.input_image or price.input),
                         _CTX.multiply(image_out, units.output_image or price.output))
        return price.cost_nano(text_part) + _nano(_CTX.divide(total, _MTOK))

    def worst_usage(self, input_tokens: int, output_tokens: int) -> Usage:
        """The usage of the worst case (billed when the answer never said what it used)."""
        return Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                     images=self.images if self.kind == "image" else 0,
                     audio_ms=self.audio_ms if self.kind == "transcription" else 0,
                     characters=self.characters if self.kind == "speech" else 0)


def _per_image(table: dict[tuple[str, str], Decimal],
               options: tuple[tuple[str, str], ...]) -> Decimal:
    """The dearest price of one image among ``options`` (one the table lacks: the dearest
    of all)."""
    top = max(table.values())
    return max((table.get(option) or top for option in options), default=top)


def _prices(*values: Decimal | None) -> Iterable[Decimal]:
    return [v for v in values if v is not None] or [_ZERO]
