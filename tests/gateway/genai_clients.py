"""``google-genai`` clients of a test gateway, and the Gemini upstream they reach (the fake,
answering only the gateway's own Google key)."""

from __future__ import annotations

from typing import Any

from google import genai
from google.genai import types

from tests.conftest import FakeHandle, Gateway

GOOGLE_KEY = "AIza-upstream-google-key-0123456789"
FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"

# A ``genai.Client`` closes its HTTP client when it is collected: each test's stay alive
# until it ends (``tests/gateway/conftest.py`` empties this list).
CLIENTS: list[genai.Client] = []


def gemini_upstream(fake: FakeHandle, **extra: Any) -> dict[str, Any]:
    return {"upstreams": {"google": {"kind": "gemini", "base_url": fake.url,
                                     "api_key": GOOGLE_KEY, **extra}}}


def client(gateway: Gateway, key: str, **options: Any) -> genai.Client:
    made = genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=gateway.url, **options))
    CLIENTS.append(made)
    return made
