"""Which models a configuration sends somewhere, each with where it is named: what
``tokenstile check`` looks for a price for; and each one's price in the genai-prices package
against its price under the configuration, which ``tokenstile prices diff`` prints and the
price watch compares with the last prices it recorded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tokenstile.config import Config
from tokenstile.errors import GatewayError
from tokenstile.gateway.routing import Router, Target, is_pattern
from tokenstile.price_table import pricer_clock_now, pricer_from_config
from tokenstile.prices import ModelPrice, Pricer


def routed_models(config: Config) -> Iterator[tuple[str, str]]:
    """(model, where it is named) for every model the configuration sends somewhere: exact
    route names, renames, and the models named by fallbacks, downgrades, summaries,
    features and model limits, which the zero-config default routes when no route does."""
    for i, route in enumerate(config.routes):
        if not is_pattern(route.match):
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


def routed_targets(config: Config) -> Iterator[tuple[str, str, Target]]:
    """(model, where it is first named, the upstream that serves it) for every routed model
    once; a glob and a model that no upstream serves are passed over."""
    router = Router(config)
    seen: set[str] = set()
    for model, where in routed_models(config):
        if model in seen or is_pattern(model):
            continue
        seen.add(model)
        try:
            target = router.resolve(model)
        except GatewayError:
            continue
        yield model, where, target


@dataclass(frozen=True, slots=True)
class PriceDiff:
    model: str
    provider: str | None
    package: ModelPrice | None
    configured: ModelPrice | None

    @property
    def status(self) -> str:
        if self.configured is None:
            return "unpriced"
        if self.package is None:
            return "config only"
        return "same" if self.package == self.configured else "differs"


def routed_prices(config: Config, at: float | None = None) -> Iterator[PriceDiff]:
    """For every model the configuration routes (as ``tokenstile check`` finds them): its
    price in the installed genai-prices package and its price under this configuration."""
    pricer, package = pricer_from_config(config), Pricer()
    when = pricer_clock_now() if at is None else at
    for model, _, target in routed_targets(config):
        yield PriceDiff(model, target.provider,
                        package.genai_price(target.model, target.provider, when),
                        pricer.price_for(target.model, target.provider, at=when))
