"""The fake upstream's image, audio and form routes (OpenAI's shapes, exact usage).

- ``POST /v1/images/generations`` and ``/v1/images/edits`` (a form): ``n`` tiny PNGs; the
  ``gpt-image-*`` models report ``usage`` (prompt tokens, ``IMAGE_INPUT_TOKENS`` per image
  sent, OpenAI's output tokens per quality and size, ``auto`` made at medium, 1024x1024).
- ``POST /v1/audio/transcriptions`` (a form): the audio's length is read with the standard
  library's ``wave`` for WAV files (any other file lasts ``len / 16000`` seconds, as if it
  were 128 kbit/s); ``whisper-1`` reports ``usage: {type: duration, seconds}`` (rounded up),
  the ``*-transcribe`` models token usage (``AUDIO_TOKENS_PER_MIN``). ``response_format``
  text, srt and vtt answer plain text without usage.
- ``POST /v1/audio/speech``: audio of ``len(input) / 15 / speed`` seconds: silent PCM, WAV,
  or MPEG-2 layer III frames for mp3 (and any other format); no usage, as OpenAI's binary
  answer has none.

Each is recorded in the tally with its token usage and, in ``FakeRecord.units``, the images,
audio milliseconds and characters it would be billed for.
"""

from __future__ import annotations

import base64
import io
import math
import time
import wave
from collections.abc import Callable
from typing import Any

import orjson

from ._fake_core import count_text, reply_text
from ._fake_http import FakeHost, _Req

Json = dict[str, Any]

# A 1×1 transparent PNG, base64.
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAA"
           "SUVORK5CYII=")
IMAGE_INPUT_TOKENS = 323
AUDIO_TOKENS_PER_MIN = 1000
AUDIO_OUT_TOKENS_PER_MIN = 1250  # gpt-4o-mini-tts: $0.015 a minute at $12 per million
SPOKEN_CHARS_PER_S = 15
_OUTPUT_TOKENS = {
    ("low", "1024x1024"): 272, ("low", "1024x1536"): 408, ("low", "1536x1024"): 400,
    ("medium", "1024x1024"): 1056, ("medium", "1024x1536"): 1584, ("medium", "1536x1024"): 1568,
    ("high", "1024x1024"): 4160, ("high", "1024x1536"): 6240, ("high", "1536x1024"): 6208,
}
# An MPEG-2 layer III frame, 24 kHz mono at 32 kbit/s: 96 bytes, 576 samples (24 ms).
_MP3_FRAME = bytes([0xFF, 0xF3, 0x44, 0xC4]) + bytes(92)
_MP3_FRAME_MS = 24


def _int(value: Any, default: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(value: Any, default: float) -> float:
    if not isinstance(value, str | int | float):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    return number


async def send_events(fake: FakeHost, r: _Req, events: list[Json], cut_after: int | None,
                      record: Callable[[str], None]) -> None:
    """An SSE stream of ``events``; with ``cut_after`` the connection drops after that many
    (``record`` is told how the stream ended: completed or cut)."""
    await r.send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"), *r.id_headers()]})
    shown = events if cut_after is None else events[:cut_after]
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in shown)
    if cut_after is not None and cut_after < len(events):
        record("cut")
        await r.send({"type": "http.response.body", "body": body, "more_body": True})
        fake._deliberate_cut()
        return  # uvicorn closes the connection mid-body
    record("completed")
    await r.send({"type": "http.response.body", "body": body})


async def send_bytes(r: _Req, status: int, data: bytes, content_type: str) -> None:
    await r.send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(data)).encode()), *r.id_headers()]})
    await r.send({"type": "http.response.body", "body": data})


async def images(fake: FakeHost, r: _Req) -> None:
    body = r.body
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        await fake._error(r, 400, "Missing required parameter: 'prompt'.")
        return
    r.model = r.model or "dall-e-2"
    d = await fake._prelude(r, prompt)
    if d is None:
        return
    n = _int(body.get("n"), 1)
    inputs = sum(1 for part in r.files if part.name in ("image", "image[]"))
    if r.route.endswith("/edits") and not inputs:
        await fake._error(r, 400, "Missing required parameter: 'image'.")
        return
    as_url = body.get("response_format") == "url" or (
        r.model.startswith("dall-e") and body.get("response_format") != "b64_json")
    data = [{"url": f"https://images.fake.invalid/{r.rid}/{i}.png"} if as_url
            else {"b64_json": PNG_B64} for i in range(n)]
    answer: dict[str, Any] = {"created": int(time.time()), "data": data}
    text_in = image_in = out = 0
    if r.stream and not r.model.startswith("dall-e"):
        await _image_stream(fake, r, d.cut_after, n, inputs, prompt)
        return
    if not r.model.startswith("dall-e"):
        quality = body.get("quality") if body.get("quality") in ("low", "medium", "high") \
            else "medium"
        size = body.get("size") if (quality, body.get("size")) in _OUTPUT_TOKENS \
            else "1024x1024"
        text_in = count_text(prompt)
        image_in = inputs * IMAGE_INPUT_TOKENS
        out = n * _OUTPUT_TOKENS[(quality, size)]
        answer.update(size=size, quality=quality, usage={
            "input_tokens": text_in + image_in, "output_tokens": out,
            "total_tokens": text_in + image_in + out,
            "input_tokens_details": {"text_tokens": text_in, "image_tokens": image_in}})
    fake._record_media(r, {"images": n}, input_tokens=text_in + image_in, output_tokens=out)
    await fake._send_json(r, 200, answer)


async def _image_stream(fake: FakeHost, r: _Req, cut_after: int | None, n: int,
                        inputs: int, prompt: str) -> None:
    """``partial_images`` partial images (100 output tokens each, as OpenAI bills them)
    then each image completed with its own usage (the input on the first)."""
    body = r.body
    kind = "image_edit" if r.route.endswith("/edits") else "image_generation"
    partials = _int(body.get("partial_images"), 0)
    quality = body.get("quality") if body.get("quality") in ("low", "medium", "high") \
        else "medium"
    size = body.get("size") if (quality, body.get("size")) in _OUTPUT_TOKENS else "1024x1024"
    text, image_in = count_text(prompt), inputs * IMAGE_INPUT_TOKENS
    events: list[Json] = []
    for image in range(n):
        events += [{"type": f"{kind}.partial_image", "b64_json": PNG_B64,
                    "partial_image_index": i} for i in range(partials)]
        inp = text + image_in if image == 0 else 0
        out = _OUTPUT_TOKENS[(quality, size)] + 100 * partials
        events.append({"type": f"{kind}.completed", "b64_json": PNG_B64, "size": size,
                       "quality": quality, "created_at": int(time.time()), "usage": {
                           "input_tokens": inp, "output_tokens": out,
                           "total_tokens": inp + out, "input_tokens_details": {
                               "text_tokens": text if image == 0 else 0,
                               "image_tokens": image_in if image == 0 else 0}}})
    billed = sum(e["usage"]["output_tokens"] for e in events if "usage" in e)  # made anyway
    await send_events(fake, r, events, cut_after, lambda outcome: fake._record_media(
        r, {"images": n}, input_tokens=text + image_in, output_tokens=billed,
        outcome=outcome))


def _duration_s(data: bytes) -> float:
    try:
        with wave.open(io.BytesIO(data)) as audio:
            frames, rate = int(audio.getnframes()), int(audio.getframerate())
        return frames / rate
    except (wave.Error, EOFError, ZeroDivisionError):
        return len(data) / 16_000


async def transcriptions(fake: FakeHost, r: _Req) -> None:
    body = r.body
    audio = next((part for part in r.files if part.name == "file"), None)
    if audio is None or not r.model:
        await fake._error(r, 400, "Missing required parameter: 'file' or 'model'.")
        return
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
    d = await fake._prelude(r, prompt)
    if d is None:
        return
    seconds = _duration_s(audio.data)
    text = reply_text(max(1, math.ceil(seconds * 2)))
    fmt = body.get("response_format") or "json"
    answer: dict[str, Any] = {"text": text}
    if r.model.startswith("whisper"):
        billed = math.floor(seconds + 0.5)  # to the nearest second, as OpenAI bills
        answer["usage"] = {"type": "duration", "seconds": billed}
        fake._record_media(r, {"audio_ms": billed * 1000})
    else:
        audio_tokens = math.ceil(seconds * AUDIO_TOKENS_PER_MIN / 60)
        text_tokens = count_text(prompt)
        out = count_text(text)
        answer["usage"] = {
            "type": "tokens", "input_tokens": audio_tokens + text_tokens,
            "input_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
            "output_tokens": out, "total_tokens": audio_tokens + text_tokens + out}
        fake._record_media(r, {}, input_tokens=audio_tokens + text_tokens,
                           input_audio_tokens=audio_tokens, output_tokens=out)
    if r.stream and not r.model.startswith("whisper"):
        words = [f" {word}" for word in text.split()]
        events: list[Json] = [{"type": "transcript.text.delta", "delta": w} for w in words]
        events.append({"type": "transcript.text.done", "text": text,
                       "usage": answer["usage"]})
        await send_events(fake, r, events, d.cut_after, lambda outcome: None)
        return
    if fmt in ("text", "srt", "vtt"):
        await send_bytes(r, 200, text.encode(), "text/plain; charset=utf-8")
        return
    if fmt == "verbose_json":
        answer.update(task="transcribe", language="english", duration=seconds, segments=[])
    await fake._send_json(r, 200, answer)


async def speech(fake: FakeHost, r: _Req) -> None:
    body = r.body
    text = body.get("input")
    if not isinstance(text, str) or not text or not r.model:
        await fake._error(r, 400, "Missing required parameter: 'input' or 'model'.")
        return
    d = await fake._prelude(r, text)
    if d is None:
        return
    seconds = len(text) / SPOKEN_CHARS_PER_S / _float(body.get("speed"), 1.0)
    fmt = body.get("response_format") or "mp3"
    if fmt in ("pcm", "wav"):
        pcm = bytes(2 * math.ceil(seconds * 24_000))
        if fmt == "pcm":
            data, kind = pcm, "audio/pcm"
        else:
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(24_000)
                out.writeframes(pcm)
            data, kind = buffer.getvalue(), "audio/wav"
    else:
        data, kind = _MP3_FRAME * math.ceil(seconds * 1000 / _MP3_FRAME_MS), "audio/mpeg"
    if body.get("stream_format") == "sse":
        inp, audio = count_text(text), math.ceil(seconds * AUDIO_OUT_TOKENS_PER_MIN / 60)
        step = 4096
        events: list[Json] = [
            {"type": "speech.audio.delta",
             "audio": base64.b64encode(data[i:i + step]).decode()}
            for i in range(0, len(data), step)]
        events.append({"type": "speech.audio.done", "usage": {
            "input_tokens": inp, "output_tokens": audio, "total_tokens": inp + audio}})
        await send_events(fake, r, events, d.cut_after, lambda outcome: fake._record_media(
            r, {"characters": len(text)}, input_tokens=inp, output_tokens=audio,
            outcome=outcome))
        return
    fake._record_media(r, {"characters": len(text), "audio_ms": math.ceil(seconds * 1000)},
                       input_tokens=0 if r.model.startswith("tts-") else count_text(text))
    await send_bytes(r, 200, data, kind)
