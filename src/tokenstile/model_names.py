"""Which model names are OpenAI's, by their prefix (``gpt-``, ``o3``, ``dall-e``…): how the
price table infers a provider that genai-prices cannot, and how token counting knows a
model that OpenAI's tokenizers count."""

from __future__ import annotations

import re
from typing import Final

_O_SERIES = re.compile(r"o\d")
OPENAI_TEXT_PREFIXES: Final = (
    "gpt-",
    "chatgpt-",
    "text-embedding-",
    "davinci",
    "babbage",
    "omni-moderation",
    "text-moderation",
    "codex-",
    "computer-use",
)
# Models of audio and images: OpenAI's, but counted by their media, not by a tokenizer.
OPENAI_MEDIA_PREFIXES: Final = ("whisper", "tts-", "dall-e")


def is_openai_model(name: str, *, media: bool = False) -> bool:
    """``name`` (lower case, no provider prefix) is an OpenAI text model, or with ``media``
    also an audio or image model."""
    prefixes = (*OPENAI_TEXT_PREFIXES, *OPENAI_MEDIA_PREFIXES) if media else OPENAI_TEXT_PREFIXES
    return name.startswith(prefixes) or bool(_O_SERIES.match(name))
