"""Which upstream serves a model, and under which name."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from tokenstile.config import Config, UpstreamConfig
from tokenstile.errors import not_found


@dataclass(frozen=True, slots=True)
class Target:
    upstream: str
    config: UpstreamConfig
    model: str


class Router:
    def __init__(self, config: Config) -> None:
        self._upstreams = dict(config.upstreams)
        self._exact = {r.match: r for r in config.routes if not _is_pattern(r.match)}
        self._patterns = [r for r in config.routes if _is_pattern(r.match)]
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
            return Target(route.upstream, self._upstreams[route.upstream], route.model or model)
        if model.startswith("claude") and "anthropic" in self._upstreams:
            return Target("anthropic", self._upstreams["anthropic"], model)
        for name, upstream in self._upstreams.items():
            if upstream.kind in ("openai", "azure"):
                return Target(name, upstream, model)
        raise not_found(f"no upstream serves the model {model!r}; add a route for it",
                        code="model_not_found")


def _is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")
