"""OpenAI's image, audio and moderation APIs: what a request asks for, what an answer used.

- ``/v1/images/generations`` (JSON) and ``/v1/images/edits`` (a form): DALL·E is billed per
  image at the quality and size asked; ``gpt-image-1`` and its family by tokens, from the
  answer's ``usage``. The worst case is ``n`` images at the dearest quality and size the
  request allows (``auto`` allows all of them), and for edits every input image at
  ``media.IMAGE_INPUT_TOKENS``.
- ``/v1/audio/transcriptions`` (a form): ``whisper-1`` is billed by the second, the
  ``gpt-4o-*-transcribe`` models by tokens. The audio's length is read from the file
  (``audio_length``), or bounded by its size; the answer's ``usage`` (or ``duration``)
  settles it.
- ``/v1/audio/speech`` (JSON, binary answer): ``tts-1`` and ``tts-1-hd`` are billed per
  character, known before the call; ``gpt-4o-mini-tts`` by tokens: its binary answer says
  nothing of them, so its audio tokens are estimated from the audio's length (and the
  request is flagged ``estimated``).
- ``/v1/moderations``: free, but counted (requests limits apply).

Streamed answers (``stream: true`` for images and transcriptions, ``stream_format: sse``
for speech) are relayed event by event; their usage comes from their final events
(``image_generation.completed``, ``transcript.text.done``, ``speech.audio.done``). A stream
that ends before it is billed at the worst case reserved (``MediaStreamObserver``).
"""

from __future__ import annotations

import math
from typing import Any

from tokenstile import tokens
from tokenstile.errors import bad_request
from tokenstile.media import (
    AUDIO_TOKENS_PER_S,
    IMAGE_DEFAULTS,
    IMAGE_INPUT_TOKENS,
    PER_IMAGE,
    SPEECH_TOKENS_PER_S,
    SPOKEN_CHARS_PER_S,
    TRANSCRIPT_TOKENS_PER_S,
    MediaAsk,
    image_output_tokens,
)
from tokenstile.providers.answers import AnswerText
from tokenstile.providers.audio_length import audio_ms
from tokenstile.providers.base import optional_str, require_str, text_field
from tokenstile.providers.counts import token_count
from tokenstile.providers.multipart import FilePart
from tokenstile.providers.sse import event_fields, json_object
from tokenstile.types import ApiKind, CanonicalRequest, Usage

MEDIA_APIS: frozenset[str] = frozenset({"moderations", "images", "image_edits",
                                        "transcriptions", "speech"})
# APIs whose body is a form (``multipart/form-data``), not JSON.
FORM_APIS: frozenset[str] = frozenset({"image_edits", "transcriptions", "files"})

DEFAULT_MODELS = {"moderations": "omni-moderation-latest", "images": "dall-e-2",
                  "image_edits": "dall-e-2"}
# Sizes the per-image models can make, for a request that asks for ``auto`` or none.
_DALLE_QUALITIES = {"dall-e-3": ("standard", "hd"), "dall-e-2": ("standard",)}


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
        body[name] = value
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"'{name}' must be an integer from {low} to {high}", param=name)
    return value


def _number_field(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad_request(f"'{name}' must be a number", param=name) from None
        body[name] = value
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not (math.isfinite(value) and low <= value <= high):
        raise bad_request(f"'{name}' must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _bool_field(body: dict[str, Any], name: str) -> bool:
    """A boolean, or a form's ``true`` / ``false``."""
    value = body.get(name)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = body[name] = value.strip().lower() == "true"
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean, got {type(value).__name__}",
                          param=name)
    return value is True


def _streamed(body: dict[str, Any]) -> bool:
    """``stream`` (images, transcriptions) or ``stream_format: sse`` (speech)."""
    return _bool_field(body, "stream") or body.get("stream_format") == "sse"


def _canonical(api: ApiKind, model: str, body: dict[str, Any], ask: MediaAsk, *,
               text: str = "", cap: int = 0,
               files: tuple[FilePart, ...] | None = None) -> CanonicalRequest:
    return CanonicalRequest(api=api, wire="openai", model=model, body=body, output_cap=cap,
                            end_user=optional_str(body, "user"), input_text=text, media=ask,
                            files=files)


def parse(api: ApiKind, body: dict[str, Any],
          files: tuple[FilePart, ...] | None = None) -> CanonicalRequest:
    """A media request (``files``: a form's files) as a ``CanonicalRequest`` whose
    ``media`` says what it may be billed for."""
    if api == "moderations":
        return _moderation(body)
    streamed = _streamed(body)
    if api in ("images", "image_edits"):
        req = _image(api, body, files)
    elif api == "transcriptions":
        req = _transcription(body, files or ())
    else:
        req = _speech(body)
    req.stream = streamed
    return req


def _moderation(body: dict[str, Any]) -> CanonicalRequest:
    model = optional_str(body, "model") or DEFAULT_MODELS["moderations"]
    _bool_field(body, "stream")  # no such option: but a wrong type is a wrong request
    return _canonical("moderations", model, body, MediaAsk("moderation"),
                      text=text_field(body, "input", required=True))


def _image(api: ApiKind, body: dict[str, Any],
           files: tuple[FilePart, ...] | None) -> CanonicalRequest:
    model = optional_str(body, "model") or DEFAULT_MODELS[api]
    prompt = require_str(body, "prompt")
    n = _int_field(body, "n", 1, 10) or 1
    size = optional_str(body, "size") or ""
    quality = optional_str(body, "quality") or ""
    images = 0
    if api == "image_edits":
        images = sum(1 for part in files or () if part.name in ("image", "image[]"))
        if not images:
            raise bad_request("'image' is required: the image (or images) to edit",
                              param="image", code="missing_required_parameter")
    bare = model.strip().lower().rsplit("/", 1)[-1]
    table = PER_IMAGE.get(bare)
    if table is not None:
        default_quality, default_size = IMAGE_DEFAULTS[bare]
        qualities = (quality,) if quality in _DALLE_QUALITIES[bare] else \
            (default_quality,) if not quality else _DALLE_QUALITIES[bare]
        sizes = {s for _, s in table}
        asked_sizes = (size,) if size in sizes else (default_size,) if not size \
            else tuple(sorted(sizes))
        options = tuple((q, s) for q in qualities for s in asked_sizes)
        return _canonical(api, model, body, MediaAsk("image", images=n, options=options,
                                                     input_images=images),
                          text=prompt, files=files)
    per_image = image_output_tokens(quality, size)
    return _canonical(api, model, body,
                      MediaAsk("image", images=n, options=((quality or "auto",
                                                            size or "auto"),),
                               input_images=images),
                      text=prompt, cap=n * per_image, files=files)


def _transcription(body: dict[str, Any], files: tuple[FilePart, ...]) -> CanonicalRequest:
    model = require_str(body, "model")
    audio = next((part for part in files if part.name == "file"), None)
    if audio is None:
        raise bad_request("'file' is required: the audio to transcribe", param="file",
                          code="missing_required_parameter")
    _number_field(body, "temperature", 0, 1)
    length, exact = audio_ms(audio.data)
    prompt = optional_str(body, "prompt") or ""
    ask = MediaAsk("transcription", audio_ms=length, audio_exact=exact)
    return _canonical("transcriptions", model, body, ask, text=prompt,
                      cap=per_second(length, TRANSCRIPT_TOKENS_PER_S) + 16, files=files)


def _speech(body: dict[str, Any]) -> CanonicalRequest:
    model = require_str(body, "model")
    text = require_str(body, "input")
    voice = body.get("voice")
    if not (isinstance(voice, str) and voice) and not (
            isinstance(voice, dict) and isinstance(voice.get("id"), str)):
        raise bad_request("'voice' is required: a voice name, or {\"id\": ...} for a custom "
                          "voice", param="voice", code="missing_required_parameter")
    speed = _number_field(body, "speed", 0.25, 4.0) or 1.0
    ask = MediaAsk("speech", characters=len(text), speed=speed)
    seconds = len(text) / SPOKEN_CHARS_PER_S / speed
    return _canonical("speech", model, body, ask, text=text,
                      cap=math.ceil(seconds * SPEECH_TOKENS_PER_S) + 16)


def count_input(req: CanonicalRequest) -> int:
    """Input tokens to reserve: the text, plus the worst case of the images and audio sent
    to a model billed by tokens (none for the models billed per image, second or
    character, nor for moderations)."""
    ask = req.media
    if ask is None or ask.kind in ("moderation", "file"):
        return 0
    if ask.kind == "batch":  # counted line by line when its file was uploaded
        return ask.batch.input_tokens if ask.batch is not None else 0
    bare = req.model.strip().lower().rsplit("/", 1)[-1]
    if ask.kind == "image":
        if bare in PER_IMAGE:
            return 0
        return tokens.count_text(req.model, req.input_text) + \
            ask.input_images * IMAGE_INPUT_TOKENS
    if ask.kind == "transcription":
        if bare.startswith("whisper"):
            return 0
        return tokens.count_text(req.model, req.input_text) + \
            per_second(ask.audio_ms, AUDIO_TOKENS_PER_S)
    if bare.startswith("tts-"):
        return 0
    instructions = req.body.get("instructions")
    return tokens.count_text(req.model, req.input_text) + (
        tokens.count_text(req.model, instructions) if isinstance(instructions, str) else 0)


def per_second(ms: int, rate: int) -> int:
    """``rate`` tokens a second over ``ms`` milliseconds, rounded up (integers: exact)."""
    return -(-ms * rate // 1000)


def _details(block: Any, name: str) -> dict[str, Any]:
    value = block.get(name) if isinstance(block, dict) else None
    return value if isinstance(value, dict) else {}


def usage_of_answer(req: CanonicalRequest, payload: bytes, parsed: Any) -> tuple[Usage, bool]:
    """What a successful answer used, and whether that is an estimate (the answer did not
    say): (usage, estimated)."""
    ask = req.media
    assert ask is not None
    body = parsed if isinstance(parsed, dict) else {}
    usage_block = body.get("usage")
    if ask.kind in ("moderation", "file", "batch"):  # free, or billed when the batch ends
        return Usage(), False
    if ask.kind == "image":
        data = body.get("data")
        made = len(data) if isinstance(data, list) else 0
        if not isinstance(usage_block, dict):
            if not isinstance(data, list):  # no answer to count: the worst case
                return ask.worst_usage(req.input_tokens, req.output_cap or 0), True
            return Usage(images=made), False
        return image_usage(usage_block, made), False
    if ask.kind == "transcription":
        return _transcription_usage(req, ask, payload, body, usage_block)
    return _speech_usage(req, ask, payload)


def image_usage(block: dict[str, Any], made: int) -> Usage:
    """An image answer's (or stream event's) ``usage`` block, for ``made`` images."""
    out = token_count(block.get("output_tokens"))
    out_details = _details(block, "output_tokens_details")
    in_details = _details(block, "input_tokens_details")
    image_out = token_count(out_details.get("image_tokens")) if "image_tokens" in out_details \
        else out
    return Usage(input_tokens=token_count(block.get("input_tokens")), output_tokens=out,
                 cached_input_tokens=token_count(in_details.get("cached_tokens")),
                 input_image_tokens=token_count(in_details.get("image_tokens")),
                 output_image_tokens=image_out, images=made)


def _transcription_usage(req: CanonicalRequest, ask: MediaAsk, payload: bytes,
                         body: dict[str, Any], usage_block: Any) -> tuple[Usage, bool]:
    if isinstance(usage_block, dict) and usage_block.get("type") == "duration":
        seconds = usage_block.get("seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            return Usage(audio_ms=math.ceil(seconds * 1000)), False
    if isinstance(usage_block, dict) and usage_block.get("type") == "tokens":
        details = _details(usage_block, "input_token_details")
        return Usage(input_tokens=token_count(usage_block.get("input_tokens")),
                     output_tokens=token_count(usage_block.get("output_tokens")),
                     input_audio_tokens=token_count(details.get("audio_tokens"))), False
    duration = body.get("duration")  # verbose_json
    said = isinstance(duration, int | float) and not isinstance(duration, bool) and \
        duration >= 0
    length = math.ceil(duration * 1000) if isinstance(duration, int | float) and said \
        else ask.audio_ms
    if req.model.strip().lower().rsplit("/", 1)[-1].startswith("whisper"):
        # Billed by the second, rounded to the nearest (OpenAI's pricing page); the length
        # read from the file is exact, a bound from its size is not.
        seconds = (length + 500) // 1000 if said or ask.audio_exact else -(-length // 1000)
        return Usage(audio_ms=seconds * 1000), not (said or ask.audio_exact)
    text = body.get("text") if body else payload.decode("utf-8", "replace")
    audio = per_second(length, AUDIO_TOKENS_PER_S)
    prompt = max(req.input_tokens - per_second(ask.audio_ms, AUDIO_TOKENS_PER_S), 0)
    return Usage(input_tokens=prompt + audio, input_audio_tokens=audio,
                 output_tokens=tokens.count_text(req.model, text or "")), True


def _speech_usage(req: CanonicalRequest, ask: MediaAsk, payload: bytes) -> tuple[Usage, bool]:
    bare = req.model.strip().lower().rsplit("/", 1)[-1]
    if bare.startswith("tts-"):
        return Usage(characters=ask.characters), False
    fmt = req.body.get("response_format")
    if fmt == "pcm":  # 24 kHz, 16-bit, mono
        length = -(-len(payload) // 48)
    else:
        length, exact = audio_ms(payload)
        if not exact:
            return Usage(input_tokens=req.input_tokens,
                         output_tokens=req.output_cap or 0,
                         output_audio_tokens=req.output_cap or 0), True
    audio = min(per_second(length, SPEECH_TOKENS_PER_S), req.output_cap or 0)
    return Usage(input_tokens=req.input_tokens, output_tokens=audio,
                 output_audio_tokens=audio), True


_FINAL_IMAGE_EVENTS = frozenset({"image_generation.completed", "image_edit.completed"})


class MediaStreamObserver:
    """An image, transcription or speech stream: events relayed as they come, usage read
    from the final ones (each completed image adds its own). ``usage`` stays None until one
    arrives: the relay then bills the reserved worst case (``worst_case_usage``)."""

    __slots__ = ("_images", "_req", "_text", "usage")

    def __init__(self, req: CanonicalRequest) -> None:
        self._req = req
        self._images = 0
        self._text = AnswerText()
        self.usage: Usage | None = None

    def on_event(self, event: bytes) -> bytes | None:
        _, data = event_fields(event)
        payload = json_object(data)
        if payload is None:
            return event
        kind, block = payload.get("type"), payload.get("usage")
        if kind == "transcript.text.delta":
            self._text.see(payload.get("delta"))
        elif kind in _FINAL_IMAGE_EVENTS:
            self._images += 1
            used = image_usage(block if isinstance(block, dict) else {}, 1)
            if self.usage is None:
                self.usage = used
            else:
                self.usage.add(used)
        elif kind == "transcript.text.done" and self._req.media is not None:
            self.usage = _transcription_usage(self._req, self._req.media, b"", payload,
                                              block)[0]
        elif kind == "speech.audio.done" and isinstance(block, dict):
            out = token_count(block.get("output_tokens"))
            self.usage = Usage(input_tokens=token_count(block.get("input_tokens")),
                               output_tokens=out, output_audio_tokens=out)
        return event

    def output_text(self) -> str:
        return "".join(self._text.visible)

    def reasoning_text(self) -> str:
        return ""

    def answering(self) -> bool:
        return self._images > 0 or bool(self._text.visible)

    def usage_is_final(self) -> bool:
        return self.usage is not None


def worst_case_usage(req: CanonicalRequest) -> Usage:
    """What a media call is billed when its answer never said what it used."""
    assert req.media is not None
    return req.media.worst_usage(req.input_tokens, req.output_cap or 0)
