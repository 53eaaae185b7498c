"""Plain values for policy tests: requests parsed by the real adapter, rules from config."""

from __future__ import annotations

from typing import Any

from tokenstile.policies.resolve import Resolver
from tokenstile.policies.rules import Rules, WordCompiler
from tokenstile.policies.schema import PoliciesConfig
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.types import ApiKind, Caller, CanonicalRequest

ADAPTER = OpenAIAdapter()
CUSTOM = {"custom": ["project zeus", "acme secret"], "adult": ["nsfw"]}


def chat(content: str = "Hello there", **fields: Any) -> CanonicalRequest:
    body = {"model": fields.pop("model", "gpt-4o-mini"),
            "messages": [{"role": "system", "content": fields.pop("system", "Be brief.")},
                         {"role": "user", "content": content}], **fields}
    return parse("chat", body)


def parse(api: ApiKind, body: dict[str, Any]) -> CanonicalRequest:
    req = ADAPTER.parse(api, body)
    req.input_tokens = ADAPTER.count_input(req)
    return req


def rules_from(policies: dict[str, Any], caller: Caller | None = None,
               feature: str | None = None) -> tuple[Rules, tuple[str, ...]]:
    config = PoliciesConfig.model_validate({"wordlists": CUSTOM, **policies})
    resolver = Resolver(config, WordCompiler(config.wordlists))
    return resolver.rules(caller or Caller(key_id="key_1", project="p"), feature)


def compiler() -> WordCompiler:
    return WordCompiler(CUSTOM)
