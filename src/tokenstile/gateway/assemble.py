"""Build the request path's stages from the services of one config.

Each stage gets only the services it uses. A reload builds a new gateway (requests that
started under the old config finish with theirs); the services that outlive a reload
(stores, counters, ledger, connections, caches) are shared.
"""

from __future__ import annotations

from tokenstile.gateway.forward import Forwarder
from tokenstile.gateway.intake import Intake
from tokenstile.gateway.pipeline import Gateway
from tokenstile.gateway.relay import Relay
from tokenstile.gateway.runtime import Runtime
from tokenstile.gateway.settle import Settler
from tokenstile.gateway.summary import Summarizer


def build_gateway(rt: Runtime) -> Gateway:
    config = rt.config
    settler = Settler(rt.pricer, rt.caching, rt.ledger, rt.metrics, rt.telemetry,
                      rt.admission, rt.alerts, rt.clock, rt.router.upstreams)
    forwarder = Forwarder(config, rt.router, rt.upstream, rt.breakers, rt.adapters,
                          rt.admission, rt.pricer, rt.clock, settler.write_row)
    return Gateway(
        server=config.server, clock=rt.clock,
        intake=Intake(config.server, rt.auth, rt.adapters, rt.overrides, config.runs,
                      rt.batches),
        policies=rt.policies, degrader=rt.degrader, forwarder=forwarder, caching=rt.caching,
        admission=rt.admission,
        relay=Relay(rt.policies, rt.adapters, rt.background, rt.batches, rt.clock,
                    config.hidden_reasoning, config.server.default_output_tokens),
        settler=settler,
        summarizer=Summarizer(config.degradation.summarize_model, rt.degrader,
                              rt.adapters["openai"], rt.admission, forwarder, settler,
                              rt.clock),
    )


class CurrentGateway:
    """The gateway of the config in force: rebuilt when a reload pins a new one."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._view: Runtime | None = None
        self._gateway: Gateway | None = None

    def get(self) -> Gateway:
        view = self.runtime.view
        if self._gateway is None or self._view is not view:
            self._gateway, self._view = build_gateway(view), view
        return self._gateway
