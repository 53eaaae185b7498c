"""End-to-end helpers: a real gateway with a ``policies`` section, the openai SDK."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.conftest import Gateway

MODEL = "gpt-4o-mini"


class PolicyGateway:
    """A gateway, one key named ``k`` (policies can target ``keys: {k: …}``), a client."""

    def __init__(self, gateway: Gateway, key: str) -> None:
        self.gateway = gateway
        self.key = key

    def client(self, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.v1, api_key=self.key, max_retries=0,
                             default_headers=headers or None)

    def chat(self, content: str = "Hello", *, headers: dict[str, str] | None = None,
             **fields: Any) -> Any:
        messages = fields.pop("messages", None) or [{"role": "user", "content": content}]
        return self.client(**(headers or {})).chat.completions.create(
            model=fields.pop("model", MODEL), messages=messages, **fields)

    def rows(self, **filters: Any) -> list[Any]:
        return self.gateway.rows(**filters)


@pytest.fixture
def policy_gateway(make_gateway: Any) -> Callable[..., PolicyGateway]:
    def make(policies: dict[str, Any], **extra: Any) -> PolicyGateway:
        gateway = make_gateway({"policies": policies, **extra})
        return PolicyGateway(gateway, gateway.key(project="web", user="alice", name="k"))

    return make


def error_body(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> Any:
    return caught.value.response.json()


def message(caught: pytest.ExceptionInfo[Any]) -> str:
    """The error message as the gateway wrote it (the SDK prefixes its own text)."""
    text = error_body(caught)["error"]["message"]
    assert isinstance(text, str)
    return text


def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    """A bare HTTP call, for requests the SDK would not send (no Authorization)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
