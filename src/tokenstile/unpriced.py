"""Which models the configuration routes that have no price (``tokenstile check``).

A call to such a model is recorded at $0 (flagged ``unpriced_model``) and a USD budget
refuses it, so an operator wants to hear about it before the first call, not after.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tokenstile.config import Config
from tokenstile.errors import GatewayError
from tokenstile.gateway.routing import Router, Target
from tokenstile.gateway.runtime import pricer_for
from tokenstile.media import priced_apart


@dataclass(frozen=True, slots=True)
class Unpriced:
    model: str
    target: Target
    where: str

    def message(self) -> str:
        served = "" if self.target.model == self.model else f" (sent as {self.target.model!r})"
        provider = self.target.provider or "unknown: an OpenAI-compatible server"
        return (f"{self.where}: the model {self.model!r}{served}, served by the upstream "
                f"{self.target.upstream!r} (provider {provider}), has no price; its calls are "
                f"recorded at $0 and USD budgets refuse it; give {self.target.model!r} a "
                "price under 'prices:'")


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def routed_models(config: Config) -> Iterator[tuple[str, str]]:
    """(model, where it is named) for every model the configuration sends somewhere: exact
    route names, renames, and the models named by fallbacks, downgrades, summaries,
    features and model limits, which the zero-config default routes when no route does."""
    for i, route in enumerate(config.routes):
        if not _is_pattern(route.match):
            yield route.match, f"routes[{i}]"
        elif route.model:
            yield route.model, f"routes[{i}].model"
    for model, chain in config.resilience.fallbacks.items():
        for name in (model, *chain):
            yield name, f"resilience.fallbacks.{model}"
    for model, cheaper in config.degradation.downgrade.items():
        yield model, f"degradation.downgrade.{model}"
        yield cheaper, f"degradation.downgrade.{model}"
    if config.degradation.summarize_model:
        yield config.degradation.summarize_model, "degradation.summarize_model"
    for name, feature in config.features.items():
        if feature.model:
            yield feature.model, f"features.{name}.model"
    for i, limit in enumerate(config.limits):
        for j, threshold in enumerate(limit.thresholds or ()):
            if threshold.downgrade_to:
                yield threshold.downgrade_to, f"limits[{i}].thresholds[{j}].downgrade_to"
        if limit.scope == "model":
            for name in [limit.match] if isinstance(limit.match, str) else limit.match:
                yield name, f"limits[{i}].match"
    for i, threshold in enumerate(config.alerts):
        if threshold.downgrade_to:
            yield threshold.downgrade_to, f"alerts[{i}].downgrade_to"


def unpriced_models(config: Config) -> list[Unpriced]:
    """The routed models (see ``routed_models``) with no price at the provider that serves
    them, each once (where it is first named)."""
    router, pricer = Router(config), pricer_for(config)
    seen: set[str] = set()
    out: list[Unpriced] = []
    for model, where in routed_models(config):
        if model in seen or _is_pattern(model):
            continue
        seen.add(model)
        try:
            target = router.resolve(model)
        except GatewayError:
            continue  # no upstream serves it: not a pricing question
        if not pricer.known(target.model, target.provider) and \
                not priced_apart(pricer, target.model, target.provider):
            out.append(Unpriced(model, target, where))
    return out
