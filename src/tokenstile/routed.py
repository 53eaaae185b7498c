"""Which models a configuration sends somewhere, each with where it is named: what
``tokenstile check`` looks for a price for, and what ``tokenstile prices diff`` compares."""

from __future__ import annotations

from collections.abc import Iterator

from tokenstile.config import Config
from tokenstile.errors import GatewayError
from tokenstile.gateway.routing import Router, Target, is_pattern


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
