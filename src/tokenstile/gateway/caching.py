"""The response cache in the request path: which requests use it, and how.

A request's plan is made once, after routing and before admission: its lookup key, TTL and
what the client allows (``x-tokenstile-cache: skip|refresh|no-store``). ``always`` rules
answer hits before anything is reserved, and identical misses in flight together go
upstream once (``cache/flight.py``): the others wait and are served the answer as hits;
``on_block`` rules answer from the cache only when a hard budget would refuse the request.
Answers are written after the response is sent.

With no ``cache:`` section, a config whose budgets name ``fallback: cache`` gets an
in-memory ``on_block`` cache, so the fallback it asks for exists.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tokenstile.cache import (
    CachedAnswer,
    GuardedCache,
    cache_key,
    cache_use,
    key_to_store,
    open_response_cache,
)
from tokenstile.cache.flight import SingleFlight
from tokenstile.clock import Clock
from tokenstile.config import CacheConfig, CacheRuleConfig, Config
from tokenstile.types import CachePlan

if TYPE_CHECKING:
    from tokenstile.types import RequestContext


# How long a cache store replaced by a reload stays open for the requests still using it.
RETIRE_AFTER_S = 30.0


def effective_cache_config(config: Config) -> CacheConfig | None:
    if config.cache is not None:
        return config.cache
    fallbacks = [t.fallback for t in config.alerts] + [
        t.fallback for limit in config.limits for t in limit.thresholds or ()]
    wants = any(f == "cache" or (isinstance(f, list) and "cache" in f) for f in fallbacks)
    if not wants:
        return None
    return CacheConfig(store="memory://", rules=[CacheRuleConfig(mode="on_block")])


class CacheStage:
    def __init__(self, config: Config, clock: Clock) -> None:
        self.clock = clock
        self.config: CacheConfig | None = None
        self.cache: GuardedCache | None = None
        self.flights: SingleFlight | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired: list[GuardedCache] = []
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Apply the ``cache`` section of a (reloaded) config: rules, TTLs, sharing and
        limits at once; a new store is opened and the old one closed a little later, once
        the requests using it are done (a request that still reaches it gets a miss)."""
        new = effective_cache_config(config)
        old, self.config = self.config, new
        if new is None or old is None or new.store != old.store:
            if self.cache is not None:
                self._retire(self.cache)
            self.cache = self.flights = None
            if new is None:
                return
            self.cache = open_response_cache(new.store, clock=self.clock,
                                             max_entry_bytes=new.max_entry_bytes,
                                             retry_after_s=new.retry_after_s)
        assert self.cache is not None
        self.cache.max_entry_bytes = new.max_entry_bytes
        self.cache.retry_after_s = new.retry_after_s
        if new.single_flight_wait_s <= 0:
            self.flights = None  # flights under way still land on their own
        elif self.flights is None:
            self.flights = SingleFlight(self.cache, new.single_flight_wait_s)
        else:
            self.flights.wait_s = new.single_flight_wait_s

    def _retire(self, cache: GuardedCache) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._retired.append(cache)
            return

        async def close_later() -> None:
            try:
                await asyncio.sleep(RETIRE_AFTER_S)
            finally:
                await cache.close()

        task = loop.create_task(close_later(), name="tokenstile-old-cache")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _rule(self, ctx: RequestContext) -> CacheRuleConfig | None:
        assert self.config is not None
        caller, req = ctx.caller, ctx.req
        attrs = {"organization": caller.organization, "project": caller.project,
                 "team": caller.team, "user": caller.user, "tier": caller.tier,
                 "key": caller.key_id, "feature": req.feature, "model": req.model}
        for rule in self.config.rules:
            if all(attrs.get(name) == value for name, value in rule.match.items()):
                if rule.mode == "off" or (rule.apis is not None and ctx.api not in rule.apis):
                    return None
                return rule
        return None

    def plan(self, ctx: RequestContext) -> CachePlan | None:
        if self.cache is None or self.config is None:
            return None
        rule = self._rule(ctx)
        if rule is None:
            return None
        share = self.config.share
        namespace = "" if share == "global" else str(
            {"organization": ctx.caller.organization, "project": ctx.caller.project,
             "key": ctx.caller.key_id}[share])
        plan = CachePlan(cache_key(ctx.req, namespace), namespace,
                         rule.ttl_s or self.config.ttl_s, rule.mode, cache_use(ctx.headers))
        ctx.cache = "miss" if plan.read_on_block else "skip"
        ctx.response_headers["x-tokenstile-cache"] = ctx.cache
        return plan

    async def get(self, plan: CachePlan) -> CachedAnswer | None:
        if self.cache is None or plan.lookup is None:
            return None
        return await self.cache.get(plan.lookup)

    async def read_now(self, ctx: RequestContext, plan: CachePlan) -> CachedAnswer | None:
        """The stored answer for an ``always`` rule; on a miss, the answer of an identical
        request already on its way upstream (single flight), or None when this request
        goes itself (leading the flight others wait on, ``ctx.cache_flight``)."""
        answer = await self.get(plan)
        if answer is not None or self.flights is None or plan.lookup is None:
            return answer
        answer, ctx.cache_flight = await self.flights.miss(plan.lookup,
                                                           lambda: self.get(plan))
        return answer

    async def land(self, ctx: RequestContext) -> None:
        """The request that led a flight is done and its answer stored (if any)."""
        flight, ctx.cache_flight = ctx.cache_flight, None
        if flight is not None:
            await flight.owner.land(flight)

    async def store(self, ctx: RequestContext, plan: CachePlan, body: bytes) -> None:
        """Keep a successful answer (in the client's format, before response policies)."""
        if self.cache is None or not plan.write or ctx.req is None or ctx.usage is None:
            return
        key = key_to_store(plan.lookup, ctx.req, body, plan.namespace)
        if key is None:
            return
        answer = CachedAnswer(api=ctx.api, wire=ctx.wire, body=body,
                              model=ctx.served_model or ctx.req.model, usage=ctx.usage,
                              cost_nano=ctx.cost_nano, created_at=ctx.ts, ttl_s=plan.ttl_s)
        await self.cache.put(key, answer, plan.ttl_s)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()  # closes its cache now
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for cache in [*self._retired, *([self.cache] if self.cache is not None else [])]:
            await cache.close()
        self._retired.clear()
