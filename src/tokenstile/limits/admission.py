"""Admission: reserve the worst case on every applicable counter, then settle the actual.

The worst case of a request is its input tokens plus its output cap, priced. It is reserved
on every counter that applies in ONE atomic store call (all or nothing), so concurrent
requests and many gateway processes can never overshoot a hard limit together. When the
request names no output cap, the gateway supplies one (and writes it into the body) so the
worst case is finite; if the budget cannot take the default cap, the cap shrinks to what
is left. After the response, the reservation is replaced by what was used.

When the counter store cannot be reached, each limit fails closed (503, the default for
hard budgets) or open (admitted unmetered, the row flagged ``unmetered``). The store's
health (``store_health``) makes calls fail fast during an outage; settles and releases that
could not reach it wait in ``leases`` and are applied when it answers again, so an outage
neither loses usage nor leaves a refused request's reservation behind. What a refusal says
is written in ``explain``; output caps in ``caps``; counter keys in ``counter_keys``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from tokenstile.config import Config
from tokenstile.errors import GatewayError
from tokenstile.hidden_input import HiddenInput
from tokenstile.limits import explain
from tokenstile.limits.allowance import Allowance
from tokenstile.limits.caps import MIN_SUPPLIED_CAP, answers, reserved_input, set_output_cap
from tokenstile.limits.counter_keys import allowance, charge_ttl, counter_key
from tokenstile.limits.explain import NoRoomForRetry
from tokenstile.limits.leases import Leases, Unsettled
from tokenstile.limits.model import Limit, compile_limits
from tokenstile.limits.overrides import apply_limit_overrides
from tokenstile.limits.runs import RunBudgets
from tokenstile.limits.store_health import StoreHealth
from tokenstile.providers.terms import reservation_terms
from tokenstile.stores import shards
from tokenstile.stores.counters import Charge, CounterStore, ReserveOutcome, StoreUnavailable
from tokenstile.stores.database import Override
from tokenstile.types import (
    Applied,
    Caller,
    CanonicalRequest,
    LedgerRow,
    PriceTerms,
    RequestContext,
    Ticket,
    Unit,
    Usage,
)

if TYPE_CHECKING:
    from tokenstile.clock import Clock
    from tokenstile.prices import ModelPrice, Pricer

OnBlocked = Callable[[Limit, str, int, int], None]


def _merged(charge: Charge, limit: int | None, rule: Allowance | None, ttl: int) -> Charge:
    """Two limits on one counter: the tighter amount, and of rollover and proration the
    tighter combination (proration if either prorates, rollover only if both roll over,
    at the smaller carry)."""
    ttl = max(charge.ttl, ttl)
    if limit is None:
        return replace(charge, ttl=ttl)
    if charge.limit is None:
        return replace(charge, limit=limit, allowance=rule, ttl=ttl)
    mine, other = charge.allowance, rule
    combined: Allowance | None = None
    if mine is not None or other is not None:
        base = mine or other
        assert base is not None
        carry = min(mine.carry_cap, other.carry_cap) if mine and other else 0
        combined = replace(base, prorate=bool((mine and mine.prorate) or
                                              (other and other.prorate)),
                           carry_cap=carry, previous=base.previous if carry else None)
    return replace(charge, limit=min(charge.limit, limit), allowance=combined, ttl=ttl)


def actual(unit: Unit, usage: Usage | None, cost_nano: int) -> int:
    """What a call used, in a limit's unit (``usage`` None: it was never sent)."""
    if unit == "requests":
        return 1
    if usage is None:
        return 0
    if unit == "tokens":
        return usage.input_tokens + usage.output_tokens
    if unit == "input_tokens":
        return usage.input_tokens
    if unit == "output_tokens":
        return usage.output_tokens
    return cost_nano


class Admission:
    def __init__(self, config: Config, counters: CounterStore, pricer: Pricer, clock: Clock,
                 *, on_blocked: OnBlocked | None = None,
                 on_store_error: Callable[[str], None] | None = None) -> None:
        self.counters = counters
        self.shard_by: str | None = getattr(counters, "shard_by", None)
        self.pricer = pricer
        self.clock = clock
        self.on_blocked = on_blocked
        self.health = StoreHealth(clock, on_store_error)
        self.leases = Leases(counters, self.health, clock, config.server.reservation_lease_s)
        self.utilization: dict[str, float] = {}
        self._overrides: list[Override] = []
        self._last_estimate: tuple[CanonicalRequest, tuple[Any, ...], int | None] | None = None
        self.reconfigure(config)

    def apply_overrides(self, overrides: list[Override]) -> None:
        """Runtime budget amounts and shadow flags from the database replace the file's."""
        self._overrides = overrides
        self.limits = apply_limit_overrides(self.base_limits, overrides)

    def reconfigure(self, config: Config, pricer: Pricer | None = None) -> None:
        self.config = config
        if pricer is not None:
            self.pricer = pricer
        self.hidden = HiddenInput(config.hidden_input, self.pricer)
        self.base_limits = compile_limits(config)
        self.limits = apply_limit_overrides(self.base_limits, self._overrides)
        self.runs = RunBudgets(config.runs)
        self.leases.lease_s = config.server.reservation_lease_s
        self.default_cap = config.server.default_output_tokens
        self.project_priority = {name: p.priority for name, p in config.projects.items()}

    # -- reserve ----------------------------------------------------------------------------
    def applicable(self, caller: Caller, req: CanonicalRequest) -> list[Applied]:
        attrs: dict[str, str | None] = {
            "global": "global", "organization": caller.organization,
            "project": caller.project, "team": caller.team or req.tags.get("team"),
            "user": caller.user, "tier": caller.tier, "key": caller.key_id,
            "feature": req.feature, "model": req.model, "end_user": req.end_user,
        }
        now = self.clock.now()
        low = self.project_priority.get(caller.project or "") == "low"
        tenant = shards.tenant_of(self.shard_by, caller)
        out = []
        for limit in self.limits:
            scope_id = limit.scope_id(caller, attrs)
            if scope_id is None:
                continue
            hard = limit.hard_at(now, *(
                (limit.low_priority_fraction or self.config.server.low_priority_fraction,)
                if low and limit.scope in ("organization", "global") else ()))
            out.append(Applied(limit, scope_id, hard, tenant=tenant))
        if req.run is not None:
            out.extend(self.runs.applied(caller, req))
        return out

    def _remember_utilization(self, applied: Sequence[Applied]) -> None:
        """Each counter's share in use after the last admission here, so soft thresholds
        (downgrade) can be applied before the next reservation without another round trip."""
        if len(self.utilization) > 100_000:
            self.utilization.clear()
        for item in applied:
            if item.charge_index >= 0 and item.hard > 0:
                self.utilization[item.key] = (item.used + item.amount) / item.hard

    def last_utilization(self, item: Applied) -> float:
        if item.limit.window.kind == "request":
            return 0.0
        key, _ = counter_key(item.limit, item.scope_id, self.clock.now())
        return self.utilization.get(shards.qualify(item.tenant, key), 0.0)

    def terms(self, ctx: RequestContext) -> PriceTerms:
        """What the request may be billed for, the served upstream's ``auto`` tier applied."""
        upstream = self.config.upstreams.get(ctx.upstream or "")
        return reservation_terms(ctx.req, upstream.auto_service_tier if upstream else None)

    def _size_hidden_input(self, ctx: RequestContext) -> None:
        """Input the gateway cannot count is reserved at its worst case for the model that
        will serve the request (again after a switch to another model)."""
        req = ctx.req
        if not req.hidden_input:
            req.hidden_input_tokens = 0
            return
        worst = self.hidden.worst_case(ctx.model, req.input_tokens)
        req.hidden_input_tokens = worst.tokens - req.input_tokens
        ctx.hidden_input = {"sources": list(req.hidden_input),
                            "reserved_input_tokens": worst.tokens, "basis": worst.basis}

    def _worst_case(self, unit: Unit, req: CanonicalRequest, model: str, cap: int, *,
                    provider: str | None = None, terms: PriceTerms | None = None,
                    fallback: ModelPrice | None = None) -> int:
        inp = reserved_input(req)
        if unit == "tokens":
            return inp + cap
        if unit == "input_tokens":
            return inp
        if unit == "output_tokens":
            return cap
        if unit == "requests":
            return 1
        cost = self._estimate(req, model, inp, cap, provider, terms)
        if cost is None and fallback is not None:  # the limit's ``unpriced: fallback``
            cost = fallback.estimate_nano(inp, cap, terms=terms)
        if cost is None:
            raise GatewayError(
                422, f"no price is known for the model {model!r}, so its cost cannot be "
                     "checked against a USD budget; add it under 'prices:' in the config",
                code="model_unpriced", param="model")
        return cost

    def _estimate(self, req: CanonicalRequest, model: str, inp: int, cap: int,
                  provider: str | None, terms: PriceTerms | None) -> int | None:
        """The pricer's worst case; every USD limit of a request and its pending ledger row
        ask for the same one, so the last is kept for the same request."""
        key = (model, inp, cap, provider, terms, self.pricer)
        last = self._last_estimate
        if last is not None and last[0] is req and last[1] == key:
            return last[2]
        cost = self.pricer.estimate_nano(model, inp, cap, provider, terms=terms)
        self._last_estimate = (req, key, cost)
        return cost

    def priced_at_zero(self, ctx: RequestContext) -> bool:
        """The model that serves the request costs nothing (a local model whose ``prices:``
        are all zero): no USD budget stops it or switches it to a paid one."""
        req = ctx.req
        cost = self.pricer.estimate_nano(ctx.model, max(1, reserved_input(req)),
                                         max(1, req.output_cap or 1), ctx.provider,
                                         terms=self.terms(ctx))
        return cost == 0

    def _check_per_request(self, ctx: RequestContext, applied: list[Applied]) -> None:
        """Per-request limits: output caps are clamped or supplied, the rest refuse."""
        req = ctx.req
        for item in applied:
            limit = item.limit
            if limit.window.kind != "request" or limit.shadow:
                continue
            if limit.unit == "output_tokens" and (req.output_cap is None
                                                  or req.output_cap > item.hard):
                if req.media is not None:  # images, audio, batches: no cap to write
                    ctx.block_reason = f"request_limit:{limit.name}"
                    raise explain.too_large(item, req.output_cap or 0, req.input_tokens,
                                            req.output_cap or 0)
                per_answer = item.hard // answers(req.body)
                if per_answer < 1:  # a cap of 1 per answer would pass the limit
                    ctx.block_reason = f"request_limit:{limit.name}"
                    raise explain.no_room(item, req, "output")
                previous = req.output_cap
                set_output_cap(req, per_answer)
                ctx.flags.append(f"max_tokens_set:{limit.name}" if previous is None
                                 else f"max_tokens_clamped:{limit.name}")
        needs_cap = any(a.limit.unit in ("tokens", "output_tokens", "usd") for a in applied)
        if req.output_cap is None and needs_cap and req.api in ("chat", "responses",
                                                                "messages", "converse",
                                                                "generate_content"):
            cap = self.default_cap
            tightest: Applied | None = None
            for item in applied:
                if item.limit.window.kind == "request" and item.limit.unit == "tokens" \
                        and not item.limit.shadow:
                    room = (item.hard - reserved_input(req)) // answers(req.body)
                    if room < cap:
                        cap, tightest = room, item
            if cap < 1 and tightest is not None:
                # Forwarded without a cap, the answer could use any amount past the limit.
                ctx.block_reason = f"request_limit:{tightest.limit.name}"
                if req.hidden_input:
                    raise explain.hidden_too_large(
                        ctx, tightest,
                        reserved_input(req) + answers(req.body), "per request")
                raise explain.no_room(tightest, req, "input")
            set_output_cap(req, cap)
            ctx.flags.append("max_tokens_supplied")
        cap = req.output_cap or 0
        model = ctx.model
        for item in applied:
            limit = item.limit
            if limit.window.kind != "request" or limit.unit == "output_tokens":
                continue
            need = self._worst_case(limit.unit, req, model, cap, provider=ctx.provider,
                                    terms=self.terms(ctx), fallback=limit.fallback_price)
            if need > item.hard:
                if limit.shadow:
                    ctx.flags.append(f"shadow:{limit.name}")
                    continue
                ctx.block_reason = f"request_limit:{limit.name}"
                if req.hidden_input:
                    raise explain.hidden_too_large(ctx, item, need, "per request")
                raise explain.too_large(item, need, req.input_tokens, cap)

    def _charges(self, ctx: RequestContext, applied: list[Applied]) -> tuple[list[Charge],
                                                                             list[Unit]]:
        req = ctx.req
        now = self.clock.now()
        model = ctx.model
        cap = req.output_cap or 0
        by_key: dict[str, int] = {}
        charges: list[Charge] = []
        units: list[Unit] = []
        for item in applied:
            limit = item.limit
            if limit.window.kind == "request":
                continue
            window = limit.window
            key, window_keys = counter_key(limit, item.scope_id, now)
            if item.tenant is not None:
                key = shards.qualify(item.tenant, key)
                window_keys = tuple(shards.qualify(item.tenant, k) for k in window_keys)
            item.key = key
            item.amount = self._worst_case(limit.unit, req, model, cap, provider=ctx.provider,
                                           terms=self.terms(ctx),
                                           fallback=limit.fallback_price)
            # A call priced at zero cannot spend a USD budget, so no USD budget refuses it,
            # however far spent: free models stay free (tokens and requests still count).
            free = limit.unit == "usd" and item.amount == 0
            cap_value = None if limit.shadow or free else item.hard
            rule = allowance(limit, item.scope_id, item.hard, now) \
                if limit.varies and cap_value is not None else None
            if rule is not None and item.tenant is not None:  # its marks on the tenant's shard
                rule = replace(rule, seen=shards.qualify(item.tenant, rule.seen),
                               previous=None if rule.previous is None
                               else shards.qualify(item.tenant, rule.previous))
            ttl = charge_ttl(window, now, keep_next=limit.rollover_percent > 0)
            index = by_key.get(key)
            if index is None:
                by_key[key] = item.charge_index = len(charges)
                charges.append(Charge(key, item.amount, cap_value, ttl, window_keys, rule))
                units.append(limit.unit)
            else:
                item.charge_index = index
                charges[index] = _merged(charges[index], cap_value, rule, ttl)
        return charges, units

    async def reserve(self, ctx: RequestContext, per_request: bool = True) -> Ticket | None:
        """Check per-request limits (unless ``per_request`` is false, for the gateway's own
        calls), then reserve the worst case on every window limit in one round trip."""
        self._size_hidden_input(ctx)
        applied = self.applicable(ctx.caller, ctx.req)
        if not applied:
            return None
        if per_request:
            self._check_per_request(ctx, applied)
        charges, units = self._charges(ctx, applied)
        if not charges:
            return None
        if ctx.req.hidden_input:
            for item in applied:
                if item.charge_index >= 0 and not item.limit.shadow and item.amount > item.hard:
                    ctx.block_reason = f"budget:{item.limit.name}"
                    raise explain.hidden_too_large(ctx, item, item.amount,
                                                   explain.PER_WINDOW[item.limit.window.kind])
            if "input_worst_case" not in ctx.flags:
                ctx.flags.append("input_worst_case")
        ticket = Ticket(rid=ctx.id, charges=charges, units=units, applied=applied)
        outcome = await self._reserve_once(ctx, ticket)
        if outcome is None:
            return ticket
        if not outcome.admitted and self._shrink_supplied_cap(ctx, ticket, outcome):
            charges, units = self._charges(ctx, applied)
            ticket = Ticket(rid=ctx.id, charges=charges, units=units, applied=applied)
            outcome = await self._reserve_once(ctx, ticket)
            if outcome is None:
                return ticket
        for item in applied:
            if item.charge_index >= 0:
                item.used = outcome.used[item.charge_index]
                charge = ticket.charges[item.charge_index]
                if charge.allowance is not None and outcome.limits and charge.limit is not None:
                    # rolled over or prorated in this window: shown and paced at that
                    item.hard += (outcome.limits[item.charge_index] or 0) - charge.limit
        if not outcome.admitted:
            refusal, item = explain.exhausted(ctx, ticket, outcome.failed, self.clock.now())
            if self.on_blocked is not None and item.limit.window.kind != "run":
                self.on_blocked(item.limit, item.scope_id, item.used, item.amount)
            raise refusal
        self.leases.live.add(ticket.rid)
        self._remember_utilization(applied)
        for item in applied:
            if item.limit.shadow and item.charge_index >= 0 and \
                    item.used + item.amount > item.hard:
                ctx.flags.append(f"shadow:{item.limit.name}")
        ctx.response_headers.update(explain.ratelimit_headers(ticket, self.clock.now(),
                                                              wire=ctx.wire))
        return ticket

    async def reserve_retry(self, ctx: RequestContext, row: LedgerRow,
                            paid: int) -> Ticket | None:
        """Room for one more attempt of a request whose last ``paid`` attempts may each have
        been billed without an answer (``row``: the last one's, at its estimate).

        Per-request limits must hold ``paid + 1`` worst cases; every window limit reserves
        one more worst case, under ``row.id``, so that a gateway dying now still writes
        ``row``. Returns that reservation (None when no window limit applies); raises
        ``NoRoomForRetry`` when a hard limit has no room.
        """
        req, held = ctx.req, ctx.ticket
        applied = held.applied if held is not None else self.applicable(ctx.caller, req)
        model, cap = ctx.model, req.output_cap or 0
        for item in applied:
            limit = item.limit
            if limit.window.kind != "request" or limit.shadow or limit.unit == "requests":
                continue
            need = self._worst_case(limit.unit, req, model, cap, provider=ctx.provider,
                                    terms=self.terms(ctx), fallback=limit.fallback_price)
            if need * (paid + 1) > item.hard:
                raise NoRoomForRetry(f"{limit.name}: {paid + 1} attempts need "
                                     f"{explain.format_amount(limit.unit, need * (paid + 1))}")
        if held is None:
            return None
        ticket = Ticket(rid=row.id, charges=list(held.charges), units=list(held.units),
                        applied=held.applied)
        reason = ctx.block_reason
        try:
            outcome = await self._reserve_once(ctx, ticket, row)
        except GatewayError as refused:  # the store is down and a limit fails closed
            raise NoRoomForRetry(refused.message) from None
        finally:
            ctx.block_reason = reason
        if outcome is not None and not outcome.admitted:
            index = outcome.failed[0]
            raise NoRoomForRetry(f"{ticket.charges[index].key}: "
                                 f"{outcome.used[index]:,} used or reserved")
        if outcome is not None:
            self.leases.live.add(ticket.rid)
        return ticket

    async def _reserve_once(self, ctx: RequestContext, ticket: Ticket,
                            row: LedgerRow | None = None) -> ReserveOutcome | None:
        """One round trip; None means the store is down and every limit here fails open.
        ``row`` is what crash recovery writes (else the request's row at its estimate)."""
        record = orjson.dumps(row or self._pending_row(ctx, ticket))
        sent = not self.health.failing_fast()
        try:
            return await self.health.call("reserve", lambda: self.counters.reserve(
                ticket.rid, ticket.charges, self.clock.now() + self.leases.lease_s, record))
        except StoreUnavailable:
            if sent:  # the reserve may have landed with its reply lost: release it later
                self.leases.keep(ticket.rid, Unsettled(
                    [(c.key, -c.amount) for c in ticket.charges]))
            closed = [a for a in ticket.applied
                      if a.charge_index >= 0 and a.limit.failure_mode == "closed"]
            if closed:
                ctx.block_reason = "counter_store_unavailable"
                raise GatewayError(
                    503, f"the counter store that checks budgets is unreachable, and the "
                         f"limit {closed[0].limit.name!r} fails closed (it refuses what it "
                         "cannot check); try again in a few seconds",
                    type="api_error", code="store_unavailable",
                    headers={"retry-after": "2"}) from None
            ticket.metered = False
            ctx.flags.append("unmetered")
            return None

    def _shrink_supplied_cap(self, ctx: RequestContext, ticket: Ticket,
                             outcome: ReserveOutcome) -> bool:
        """A cap the gateway supplied may shrink to what the budget has left."""
        req = ctx.req
        if "max_tokens_supplied" not in ctx.flags or req.output_cap is None:
            return False
        room = req.output_cap
        used = outcome.used
        for index in outcome.failed:
            unit = ticket.units[index]
            limit = outcome.limits[index] if outcome.limits else ticket.charges[index].limit
            if limit is None or unit not in ("tokens", "output_tokens"):
                return False
            left = limit - used[index] - (reserved_input(req) if unit == "tokens" else 0)
            room = min(room, left)
        room //= answers(req.body)
        if room < MIN_SUPPLIED_CAP:
            return False
        set_output_cap(req, room)
        return True

    def _pending_row(self, ctx: RequestContext, ticket: Ticket) -> LedgerRow:
        """The row to write if this reservation is never settled (the gateway died)."""
        req = ctx.req
        row = ctx.ledger_row(0.0)
        row.input_tokens = reserved_input(req)
        row.output_tokens = req.output_cap or 0
        row.cost_nano = self._estimate(req, ctx.model, row.input_tokens, req.output_cap or 0,
                                       ctx.provider, self.terms(ctx)) or 0
        row.estimated = True
        row.outcome = "unsettled"
        row.status = 0
        row.flags = [*row.flags, "charged_at_estimate"]
        return row


    # -- settle -----------------------------------------------------------------------------

    async def release(self, ticket: Ticket | None) -> None:
        """Give a reservation back whole (the request will not be forwarded)."""
        await self.settle(ticket, None, 0)

    async def settle(self, ticket: Ticket | None, usage: Usage | None,
                     cost_nano: int) -> str | None:
        """Replace the reservation by what was used (``usage`` None: nothing was sent).
        Returns a flag for the request when the settle went another way than planned:
        ``settle_deferred`` (the store is down: applied when it answers) or
        ``settled_after_expiry`` (recovery had charged it at its estimate)."""
        if ticket is None or ticket.settled:
            return None
        ticket.settled = True
        used = [actual(unit, usage, cost_nano) for unit in ticket.units]
        deltas = [(charge.key, spent - charge.amount)
                  for charge, spent in zip(ticket.charges, used, strict=True)]
        if not ticket.metered:
            # Admitted unmetered: once the store answers, release the reservation if it
            # landed after all, else add what was used, so the budget still sees it.
            adds = [(charge.key, spent, charge.ttl)
                    for charge, spent in zip(ticket.charges, used, strict=True) if spent > 0]
            self.leases.keep(ticket.rid, Unsettled(deltas, adds))
            return None
        try:
            known = await self.health.call("settle",
                                           lambda: self.counters.settle(ticket.rid, deltas))
        except StoreUnavailable:
            self.leases.keep(ticket.rid, Unsettled(deltas))
            return "settle_deferred"
        if known:
            self.leases.live.discard(ticket.rid)
            return None
        try:
            await self._correct_claimed(ticket, deltas)
        finally:
            self.leases.live.discard(ticket.rid)  # live until its counters are right
        return "settled_after_expiry"

    async def _correct_claimed(self, ticket: Ticket, deltas: list[tuple[str, int]]) -> None:
        """A first settle that finds its reservation gone: crash recovery claimed it (its
        lease ran out) and its charges stayed counted at the reserved amounts, while the
        ledger keeps this request's own row over the estimate. The counters move by the
        same deltas the settle would have applied, so they end at what was used. (A settle
        retried after a lost reply may find its own reservation gone: it goes through
        ``Leases.flush``, which changes nothing then.)"""
        adjust = [(charge.key, delta, charge.ttl)
                  for charge, (_, delta) in zip(ticket.charges, deltas, strict=True) if delta]
        if adjust:
            with contextlib.suppress(StoreUnavailable):  # left at the estimate: over, not under
                await self.health.call("add", lambda: self.counters.add(adjust))

    # -- the store ---------------------------------------------------------------------------

    async def probe(self) -> None:
        """Ping the store (``/readyz``); a success ends an outage at once."""
        await self.health.call("ping", self.counters.ping)

    def store_status(self) -> dict[str, Any]:
        """The counter store as admission sees it, and what its limits do while it is down."""
        closed = sorted({a.name for a in self.limits if a.window.kind != "request"
                         and a.failure_mode == "closed"})
        opened = sorted({a.name for a in self.limits if a.window.kind != "request"
                         and a.failure_mode == "open"})
        health = self.health
        status: dict[str, Any] = {
            "status": "unavailable" if health.down else "ok",
            "errors": health.errors, "unsettled": len(self.leases.unsettled),
            "fail_closed": len(closed), "fail_open": opened,
        }
        if health.down:
            status["down_for_s"] = round(health.down_for(), 1)
            status["error"] = health.error
        return status
