"""With the key database unreachable, a key that is not cached gets a clear 503, not a 500."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle
from tokenstile.stores.counters import StoreUnavailable


def test_an_unreachable_key_database_is_a_503(make_gateway: Any, fake: FakeHandle,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = make_gateway()
    key = gateway.key()

    async def down(key_hash: str) -> None:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(gateway.runtime.db, "key_by_hash", down)
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                    messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert "key database is unreachable" in caught.value.message
    assert caught.value.response.headers["retry-after"] == "2"
    assert fake.fake.tally.requests == 0
