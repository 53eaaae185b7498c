"""Which upstream serves a model, and under which name.

Routes in the config win (exact names first, then globs in order). Without one, ``claude*``
models go to the Anthropic upstream (the one named ``anthropic``, else the first of kind
``anthropic``), Bedrock model ids (``anthropic.claude-…``, ``us.amazon.nova-…``, Bedrock
ARNs) to the first upstream of kind ``bedrock``, Gemini models (``gemini-…``, ``gemma-…``,
``models/…``) to the first upstream of kind ``gemini``, and every other model to the first
OpenAI-compatible upstream: the zero-config defaults then behave like the two SDKs reading
``OPENAI_*`` and ``ANTHROPIC_*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from tokenstile.config import Config, UpstreamConfig
from tokenstile.errors import not_found
from tokenstile.prices import upstream_provider
from tokenstile.types import WireFormat


@dataclass(frozen=True, slots=True)
class Target:
    upstream: str
    config: UpstreamConfig
    model: str
    wire: WireFormat = "openai"
    """The wire format the upstream speaks (Azure speaks OpenAI's)."""
    provider: str | None = None
    """Whose prices its calls are billed at (``prices.upstream_provider``)."""

    @classmethod
    def of(cls, upstream: str, config: UpstreamConfig, model: str) -> Target:
        return cls(upstream, config, model, _WIRES.get(config.kind, "openai"),
                   upstream_provider(config.kind, config.base_url, config.provider))


_WIRES: dict[str, WireFormat] = {"anthropic": "anthropic", "bedrock": "bedrock",
                                  "gemini": "gemini"}
_GEMINI_PREFIXES = ("gemini-", "gemma-", "learnlm-", "models/")
# Bedrock model ids: provider.model, with an optional geography for inference profiles
# (us.anthropic.claude-…), or an ARN.
_BEDROCK_ID = re.compile(
    r"^(arn:aws[a-z-]*:bedrock:|(?:(?:us|eu|apac|jp|au|ca|us-gov|global)\.)?"
    r"(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|qwen|openai|writer|google|"
    r"nvidia|moonshotai|minimax|zai|twelvelabs|stability|luma)\.)")


def is_bedrock_model(model: str) -> bool:
    return _BEDROCK_ID.match(model) is not None


class Router:
    def __init__(self, config: Config) -> None:
        self._upstreams = dict(config.upstreams)
        self._exact = {r.match: r for r in config.routes if not is_pattern(r.match)}
        self._patterns = [r for r in config.routes if is_pattern(r.match)]
        self._anthropic = _default_anthropic(self._upstreams)
        self._openai = next((name for name, u in self._upstreams.items()
                             if u.kind in ("openai", "azure")), None)
        self._bedrock = next((name for name, u in self._upstreams.items()
                              if u.kind == "bedrock"), None)
        self._gemini = next((name for name, u in self._upstreams.items()
                             if u.kind == "gemini"), None)
        self._cache: dict[str, Target] = {}

    @property
    def upstreams(self) -> dict[str, UpstreamConfig]:
        return self._upstreams

    def resolve(self, model: str) -> Target:
        target = self._cache.get(model)
        if target is None:
            target = self._resolve(model)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[model] = target
        return target

    def _resolve(self, model: str) -> Target:
        route = self._exact.get(model)
        if route is None:
            route = next((r for r in self._patterns if fnmatchcase(model, r.match)), None)
        if route is not None:
            return Target.of(route.upstream, self._upstreams[route.upstream],
                             route.model or model)
        if model.startswith("claude") and self._anthropic is not None:
            return Target.of(self._anthropic, self._upstreams[self._anthropic], model)
        if self._gemini is not None and (model.startswith(_GEMINI_PREFIXES)
                                         or (self._openai is None and self._bedrock is None)):
            return Target.of(self._gemini, self._upstreams[self._gemini], model)
        if self._bedrock is not None and (self._openai is None or is_bedrock_model(model)):
            return Target.of(self._bedrock, self._upstreams[self._bedrock], model)
        if self._openai is not None:
            return Target.of(self._openai, self._upstreams[self._openai], model)
        raise not_found(f"no upstream serves the model {model!r}; add a route for it",
                        code="model_not_found")


def _default_anthropic(upstreams: dict[str, UpstreamConfig]) -> str | None:
    named = upstreams.get("anthropic")
    if named is not None and named.kind == "anthropic":
        return "anthropic"
    first = next((name for name, u in upstreams.items() if u.kind == "anthropic"), None)
    return first or ("anthropic" if named is not None else None)


def is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")
