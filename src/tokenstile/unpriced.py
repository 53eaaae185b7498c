"""Which models the configuration routes that have no price (``tokenstile check``).

A call to such a model is recorded at $0 (flagged ``unpriced_model``) and a USD budget
refuses it, so an operator wants to hear about it before the first call, not after.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenstile.config import Config
from tokenstile.gateway.routing import Target
from tokenstile.media import priced_apart
from tokenstile.price_table import pricer_from_config
from tokenstile.routed import routed_targets


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


def unpriced_models(config: Config) -> list[Unpriced]:
    """The routed models (see ``routed_models``) with no price at the provider that serves
    them, each once (where it is first named)."""
    pricer = pricer_from_config(config)
    return [Unpriced(model, target, where) for model, where, target in routed_targets(config)
            if not pricer.known(target.model, target.provider)
            and not priced_apart(pricer, target.model, target.provider)]
