"""A helper to make audio files for the audio tests (the image, audio, moderation and batch
tests run on the ``in_process`` gateway of ``tests/conftest.py``)."""

from __future__ import annotations

import io
import wave


def wav(seconds: float, rate: int = 16_000) -> bytes:
    """A silent mono 16-bit WAV file lasting ``seconds``."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * int(seconds * rate)))
    return buffer.getvalue()
