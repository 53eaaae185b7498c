"""Admission: reserve the worst case on every applicable counter, then settle the actual.

The worst case of a request is its input tokens plus its output cap, priced. It is reserved
on every counter that applies in ONE atomic store call (all or nothing), so concurrent
requests and many gateway processes can never overshoot a hard limit together. When the
request names no output cap, the gateway supplies one (and writes it into the body) so the
worst case is finite; if the budget cannot take the default cap, the cap shrinks to what
is left. After the response, the reservation is replaced by what was used.

When the counter store cannot be reached, each limit fails closed (503, the default for
hard budgets) or open (admitted unmetered, the row flagged ``unmetered``). While the store
is down, calls fail fast after one failure instead of each waiting out the store's timeout;
settles and releases that could not reach it are kept and applied when it answers again,
so an outage neither loses usage nor leaves a refused request's reservation behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from tokenstile.config import Config
from tokenstile.errors import GatewayError
from tokenstile.hidden_input import HiddenInput, describe_sources
from tokenstile.limits.model import Limit, compile_limits
from tokenstile.limits.overrides import apply_limit_overrides
from tokenstile.limits.windows import (
    TTL_MARGIN_S,
    Window,
    describe_reset,
    rolling_bucket_labels,
    ttl_seconds,
    window_bounds,
    window_end,
    window_label,
)
from tokenstile.providers.terms import reservation_terms
from tokenstile.stores.counters import Charge, CounterStore, ReserveOutcome, StoreUnavailable
from tokenstile.stores.database import Override
from tokenstile.types import Caller, CanonicalRequest, LedgerRow, PriceTerms, Unit, nano_to_usd

if TYPE_CHECKING:
    from tokenstile.clock import Clock
    from tokenstile.gateway.context import RequestContext
    from tokenstile.prices import ModelPrice, Pricer

log = logging.getLogger("tokenstile.admission")

T = TypeVar("T")

MIN_SUPPLIED_CAP = 16
# After a failed store call, further calls fail at once for this long (one probe at a time
# after it), so an outage costs each request microseconds, not the store's timeout.
STORE_RETRY_S = 0.5
# Settles and releases kept while the store is down; past this, the oldest are dropped
# (their leases run out and they are charged at their estimate: never under-counted).
MAX_UNSETTLED = 100_000
_WINDOW_WORDS = {"minute": "per-minute", "hour": "hourly", "day": "daily", "week": "weekly",
                 "month": "monthly", "rolling": "rolling", "request": "per-request"}
_UNIT_WORDS = {"tokens": "tokens", "input_tokens": "input tokens",
               "output_tokens": "output tokens", "requests": "requests", "usd": "USD"}
_PER_WINDOW = {"minute": "a minute", "hour": "an hour", "day": "a day", "week": "a week",
               "month": "a month", "rolling": "in its rolling window", "request": "per request"}
_SCOPE_WORDS = {"global": "the gateway", "organization": "organization", "project": "project",
                "team": "team", "user": "user", "tier": "tier", "key": "key",
                "feature": "feature", "model": "model", "end_user": "end user"}


@dataclass(slots=True)
class Applied:
    """One limit as it applies to one request, with its counter (if it has one)."""

    limit: Limit
    scope_id: str
    hard: int
    key: str = ""
    charge_index: int = -1
    used: int = 0
    amount: int = 0


class NoRoomForRetry(Exception):
    """A hard limit cannot hold the worst case of another attempt at the upstream."""


class BudgetExhausted(GatewayError):
    """A window budget has no room for this request; carries the limit so a fallback (a
    cached answer, a cheaper model) can be tried before the client gets the 429."""

    def __init__(self, limit: Limit, scope_id: str, message: str, code: str,
                 headers: dict[str, str]) -> None:
        super().__init__(429, message, type="rate_limit_error", code=code, headers=headers)
        self.limit = limit
        self.scope_id = scope_id


@dataclass(slots=True)
class Unsettled:
    """Counter changes that could not reach the store yet: ``deltas`` settle a reservation;
    ``adds`` (usage admitted unmetered) are applied instead when the store never held it."""

    deltas: list[tuple[str, int]]
    adds: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass(slots=True)
class Ticket:
    rid: str
    charges: list[Charge]
    units: list[Unit]
    applied: list[Applied] = field(default_factory=list)
    metered: bool = True
    settled: bool = False


def describe_scope(limit: Limit, scope_id: str) -> str:
    if limit.scope == "global":
        return "the gateway"
    return f"{_SCOPE_WORDS[limit.scope]} {scope_id!r}"


def format_amount(unit: Unit, value: int) -> str:
    if unit == "usd":
        return f"${nano_to_usd(value):,.2f}"
    return f"{value:,}"


def reset_text(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``1h2m3s``."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _key_part(value: str) -> str:
    cleaned = value.replace("%", "%25").replace(":", "%3A").replace("{", "%7B") \
        .replace("}", "%7D")
    if len(cleaned) > 80:
        return "h" + hashlib.sha256(value.encode()).hexdigest()[:32]
    return cleaned


def counter_key(limit: Limit, scope_id: str, now: float) -> tuple[str, tuple[str, ...]]:
    """The counter a limit charges at ``now`` and, for rolling windows, every bucket summed.

    Keys read ``scope:id:unit:window:label``; limits that agree on all of these share one
    counter (and the tighter amount wins).
    """
    prefix = f"{limit.scope}:{_key_part(scope_id)}:{limit.unit}:"
    window = limit.window
    if window.kind == "rolling":
        labels = rolling_bucket_labels(window, now)
        return prefix + labels[0], tuple(prefix + label for label in labels)
    return prefix + current_label(window, now), ()


_labels: dict[Window, tuple[float, float, str]] = {}


def _current(window: Window, now: float) -> tuple[float, float, str]:
    """Bounds and ``kind:label`` of the calendar window holding ``now``, cached until it
    ends (zone arithmetic is the costliest part of building a charge)."""
    cached = _labels.get(window)
    if cached is not None and cached[0] <= now < cached[1]:
        return cached
    start, end = window_bounds(window, now)
    cached = (start, end, f"{window.kind}:{window_label(window, now)}")
    if len(_labels) > 1024:
        _labels.clear()
    _labels[window] = cached
    return cached


def current_label(window: Window, now: float) -> str:
    return _current(window, now)[2]


def charge_ttl(window: Window, now: float) -> int:
    if window.kind == "rolling":
        return ttl_seconds(window, now)
    return max(1, math.ceil(_current(window, now)[1] - now)) + TTL_MARGIN_S


def reserved_input(req: CanonicalRequest) -> int:
    """The input a reservation holds: what was counted plus the worst case of what could
    not be."""
    return req.input_tokens + req.hidden_input_tokens


def output_cap_field(req: CanonicalRequest) -> str:
    if req.api == "responses":
        return "max_output_tokens"
    if req.api == "chat" and req.model.startswith(("o1", "o3", "o4", "gpt-5")):
        return "max_completion_tokens"
    return "max_tokens"


def answers(body: dict[str, Any]) -> int:
    """Answers one request asks for (``n``, ``best_of``): each may use the whole cap."""
    values = [v for k in ("n", "best_of") if isinstance(v := body.get(k), int) and v > 1]
    return max(values, default=1)


def set_output_cap(req: CanonicalRequest, cap: int) -> None:
    """Write the cap (per answer) into the body that will be forwarded (the client's copy is
    untouched); the worst case, ``req.output_cap``, counts every answer asked for."""
    name = req.output_cap_field or output_cap_field(req)
    req.body = {**req.body, name: cap}
    req.output_cap, req.output_cap_field = cap * answers(req.body), name


class Admission:
    def __init__(self, config: Config, counters: CounterStore, pricer: Pricer,
                 clock: Clock) -> None:
        self.counters = counters
        self.pricer = pricer
        self.clock = clock
        self.live: set[str] = set()
        self.utilization: dict[str, float] = {}
        self.on_blocked: Callable[[Limit, str, int, int], None] | None = None
        self.on_store_error: Callable[[str], None] | None = None
        self._overrides: list[Override] = []
        # The counter store as admission last saw it (for fail-fast and /readyz).
        self.store_errors = 0
        self.store_error: str | None = None
        self.store_down_since: float | None = None
        self._healthy_since = time.monotonic()
        self._retry_at = 0.0
        self._probing = False
        self.unsettled: dict[str, Unsettled] = {}
        self._last_estimate: tuple[CanonicalRequest, tuple[Any, ...], int | None] | None = None
        self.reconfigure(config)

    def apply_overrides(self, overrides: list[Override]) -> None:
        """Runtime budget amounts and shadow flags from the database replace the file's."""
        self._overrides = overrides
        self.limits = apply_limit_overrides(self.base_limits, overrides)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.hidden = HiddenInput(config.hidden_input, self.pricer)
        self.base_limits = compile_limits(config)
        self.limits = apply_limit_overrides(self.base_limits, self._overrides)
        self.lease_s = config.server.reservation_lease_s
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
        out = []
        for limit in self.limits:
            scope_id = limit.scope_id(caller, attrs)
            if scope_id is None:
                continue
            hard = limit.amount_at(now) * limit.hard_fraction
            if low and limit.scope in ("organization", "global"):
                hard *= limit.low_priority_fraction or self.config.server.low_priority_fraction
            out.append(Applied(limit, scope_id, int(hard)))
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
        return self.utilization.get(key, 0.0)

    def _terms(self, ctx: RequestContext) -> PriceTerms:
        """What the request may be billed for, the served upstream's ``auto`` tier applied."""
        assert ctx.req is not None
        upstream = self.config.upstreams.get(ctx.upstream or "")
        return reservation_terms(ctx.req, upstream.auto_service_tier if upstream else None)

    def _size_hidden_input(self, ctx: RequestContext) -> None:
        """Input the gateway cannot count is reserved at its worst case for the model that
        will serve the request (again after a switch to another model)."""
        req = ctx.req
        assert req is not None
        if not req.hidden_input:
            req.hidden_input_tokens = 0
            return
        worst = self.hidden.worst_case(ctx.served_model or req.model, req.input_tokens)
        req.hidden_input_tokens = worst.tokens - req.input_tokens
        ctx.detail["hidden_input"] = {"sources": list(req.hidden_input),
                                      "reserved_input_tokens": worst.tokens,
                                      "basis": worst.basis}

    def _hidden_note(self, ctx: RequestContext) -> str:
        """Why the reserved input is larger than the request looks, and what to set."""
        req = ctx.req
        assert req is not None
        info = ctx.detail.get("hidden_input")
        if not req.hidden_input or not isinstance(info, dict):
            return ""
        model = ctx.served_model or req.model
        return (f"; its input is reserved at its worst case of "
                f"{req.input_tokens + req.hidden_input_tokens:,} tokens ({info['basis']}), "
                f"because {describe_sources(req.hidden_input)} cannot be counted before the "
                f"call: set hidden_input.max_tokens for {model!r} to the most input such a "
                "request can bring")

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
        key = (model, inp, cap, provider, terms, self.pricer)
        last = self._last_estimate
        if last is not None and last[0] is req and last[1] == key:
            cost: int | None = last[2]
        else:  # every USD limit of a request asks for the same estimate: price it once
            cost = self.pricer.estimate_nano(model, inp, cap, provider, terms=terms)
            self._last_estimate = (req, key, cost)
        if cost is None and fallback is not None:  # the limit's ``unpriced: fallback``
            cost = fallback.estimate_nano(inp, cap, terms=terms)
        if cost is None:
            raise GatewayError(
                422, f"no price is known for the model {model!r}, so its cost cannot be "
                     "checked against a USD budget; add it under 'prices:' in the config",
                code="model_unpriced", param="model")
        return cost

    def _check_per_request(self, ctx: RequestContext, applied: list[Applied]) -> None:
        """Per-request limits: output caps are clamped or supplied, the rest refuse."""
        req = ctx.req
        assert req is not None
        for item in applied:
            limit = item.limit
            if limit.window.kind != "request" or limit.shadow:
                continue
            if limit.unit == "output_tokens" and (req.output_cap is None
                                                  or req.output_cap > item.hard):
                per_answer = item.hard // answers(req.body)
                if per_answer < 1:  # a cap of 1 per answer would pass the limit
                    ctx.block_reason = f"request_limit:{limit.name}"
                    raise self._no_room(limit, item, req, "output")
                previous = req.output_cap
                set_output_cap(req, per_answer)
                ctx.flags.append(f"max_tokens_set:{limit.name}" if previous is None
                                 else f"max_tokens_clamped:{limit.name}")
        needs_cap = any(a.limit.unit in ("tokens", "output_tokens", "usd") for a in applied)
        if req.output_cap is None and needs_cap and req.api in ("chat", "responses",
                                                                "messages"):
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
                    raise self._hidden_too_large(
                        ctx, tightest.limit, tightest,
                        reserved_input(req) + answers(req.body), "per request")
                raise self._no_room(tightest.limit, tightest, req, "input")
            set_output_cap(req, cap)
            ctx.flags.append("max_tokens_supplied")
        cap = req.output_cap or 0
        model = ctx.served_model or req.model
        for item in applied:
            limit = item.limit
            if limit.window.kind != "request" or limit.unit == "output_tokens":
                continue
            need = self._worst_case(limit.unit, req, model, cap, provider=ctx.provider,
                                    terms=self._terms(ctx), fallback=limit.fallback_price)
            if need > item.hard:
                if limit.shadow:
                    ctx.flags.append(f"shadow:{limit.name}")
                    continue
                ctx.block_reason = f"request_limit:{limit.name}"
                if req.hidden_input:
                    raise self._hidden_too_large(ctx, limit, item, need, "per request")
                raise self._too_large(limit, item, need, req.input_tokens, cap)

    def _hidden_too_large(self, ctx: RequestContext, limit: Limit, item: Applied, need: int,
                          per: str) -> GatewayError:
        """A worst case that cannot fit under a hard limit is refused (never admitted on a
        small guess), naming the setting that bounds it."""
        what = _UNIT_WORDS[limit.unit]
        allows = (f"{describe_scope(limit, item.scope_id)} allows "
                  f"{format_amount(limit.unit, item.hard)} {what} {per}")
        return GatewayError(
            422, f"this request needs up to {format_amount(limit.unit, need)} {what} but "
                 f"{allows}{self._hidden_note(ctx)}", code="hidden_input_exceeds_limit",
            param="hidden_input.max_tokens")

    @staticmethod
    def _no_room(limit: Limit, item: Applied, req: CanonicalRequest,
                 short: str) -> GatewayError:
        """A per-request limit that leaves no room for even one output token per answer
        (``short``: what runs out, ``input`` or ``output``)."""
        what = _UNIT_WORDS[limit.unit]
        allows = (f"{describe_scope(limit, item.scope_id)} allows "
                  f"{format_amount(limit.unit, item.hard)} {what} per request")
        count = answers(req.body)
        asked = f" for each of the {count} answers asked for ('n')" if count > 1 else ""
        if short == "input":
            return GatewayError(
                422, f"this request has {reserved_input(req):,} input tokens, which leaves "
                     f"no room for output{asked}: {allows}; shorten the input",
                code="request_limit_exceeded", param="messages")
        return GatewayError(
            422, f"this request asks for {count} answers but {allows}, not one token "
                 "each; ask for fewer answers ('n')", code="request_limit_exceeded",
            param="n")

    @staticmethod
    def _too_large(limit: Limit, item: Applied, need: int, input_tokens: int,
                   cap: int) -> GatewayError:
        what = _UNIT_WORDS[limit.unit]
        allows = (f"{describe_scope(limit, item.scope_id)} allows "
                  f"{format_amount(limit.unit, item.hard)} {what} per request")
        if limit.unit == "input_tokens":
            return GatewayError(422, f"this request has {input_tokens:,} input tokens but "
                                f"{allows}; shorten the input", code="request_limit_exceeded",
                                param="messages")
        return GatewayError(
            422, f"this request needs {format_amount(limit.unit, need)} {what} (input "
                 f"{input_tokens:,} + output cap {cap:,}) but {allows}; lower max_tokens or "
                 "shorten the input", code="request_limit_exceeded", param="max_tokens")

    def _charges(self, ctx: RequestContext, applied: list[Applied]) -> tuple[list[Charge],
                                                                             list[Unit]]:
        req = ctx.req
        assert req is not None
        now = self.clock.now()
        model = ctx.served_model or req.model
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
            item.key = key
            item.amount = self._worst_case(limit.unit, req, model, cap, provider=ctx.provider,
                                           terms=self._terms(ctx),
                                           fallback=limit.fallback_price)
            cap_value = None if limit.shadow else item.hard
            index = by_key.get(key)
            if index is None:
                by_key[key] = item.charge_index = len(charges)
                charges.append(Charge(key, item.amount, cap_value, charge_ttl(window, now),
                                      window_keys))
                units.append(limit.unit)
            else:
                item.charge_index = index
                old = charges[index]
                tighter = old.limit if cap_value is None else (
                    cap_value if old.limit is None else min(old.limit, cap_value))
                charges[index] = Charge(old.key, old.amount, tighter,
                                        max(old.ttl, charge_ttl(window, now)),
                                        old.window_keys)
        return charges, units

    async def reserve(self, ctx: RequestContext, per_request: bool = True) -> Ticket | None:
        """Check per-request limits (unless ``per_request`` is false, for the gateway's own
        calls), then reserve the worst case on every window limit in one round trip."""
        assert ctx.req is not None and ctx.caller is not None
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
                    raise self._hidden_too_large(ctx, item.limit, item, item.amount,
                                                 _PER_WINDOW[item.limit.window.kind])
            if "input_worst_case" not in ctx.flags:
                ctx.flags.append("input_worst_case")
        ticket = Ticket(rid=ctx.id, charges=charges, units=units, applied=applied)
        outcome = await self._reserve_once(ctx, ticket)
        if outcome is None:
            return ticket
        if not outcome.admitted and self._shrink_supplied_cap(ctx, ticket, outcome.used,
                                                              outcome.failed):
            charges, units = self._charges(ctx, applied)
            ticket = Ticket(rid=ctx.id, charges=charges, units=units, applied=applied)
            outcome = await self._reserve_once(ctx, ticket)
            if outcome is None:
                return ticket
        for item in applied:
            if item.charge_index >= 0:
                item.used = outcome.used[item.charge_index]
        if not outcome.admitted:
            raise self._exhausted(ctx, ticket, outcome.failed)
        self.live.add(ticket.rid)
        self._remember_utilization(applied)
        for item in applied:
            if item.limit.shadow and item.charge_index >= 0 and \
                    item.used + item.amount > item.hard:
                ctx.flags.append(f"shadow:{item.limit.name}")
        ctx.response_headers.update(self.headers(ticket))
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
        req, caller = ctx.req, ctx.caller
        assert req is not None
        held = ctx.ticket if isinstance(ctx.ticket, Ticket) else None
        applied = held.applied if held is not None else \
            self.applicable(caller, req) if caller is not None else []
        model, cap = ctx.served_model or req.model, req.output_cap or 0
        for item in applied:
            limit = item.limit
            if limit.window.kind != "request" or limit.shadow or limit.unit == "requests":
                continue
            need = self._worst_case(limit.unit, req, model, cap, provider=ctx.provider,
                                    terms=self._terms(ctx), fallback=limit.fallback_price)
            if need * (paid + 1) > item.hard:
                raise NoRoomForRetry(f"{limit.name}: {paid + 1} attempts need "
                                     f"{format_amount(limit.unit, need * (paid + 1))}")
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
            self.live.add(ticket.rid)
        return ticket

    async def _reserve_once(self, ctx: RequestContext, ticket: Ticket,
                            row: LedgerRow | None = None) -> ReserveOutcome | None:
        """One round trip; None means the store is down and every limit here fails open.
        ``row`` is what crash recovery writes (else the request's row at its estimate)."""
        record = orjson.dumps(row or self._pending_row(ctx, ticket))
        sent = not self._failing_fast()
        try:
            return await self._store("reserve", lambda: self.counters.reserve(
                ticket.rid, ticket.charges, self.clock.now() + self.lease_s, record))
        except StoreUnavailable:
            if sent:  # the reserve may have landed with its reply lost: release it later
                self._keep_unsettled(ticket.rid, Unsettled(
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

    def _shrink_supplied_cap(self, ctx: RequestContext, ticket: Ticket, used: Sequence[int],
                             failed: Sequence[int]) -> bool:
        """A cap the gateway supplied may shrink to what the budget has left."""
        req = ctx.req
        assert req is not None
        if "max_tokens_supplied" not in ctx.flags or req.output_cap is None:
            return False
        room = req.output_cap
        for index in failed:
            unit = ticket.units[index]
            limit = ticket.charges[index].limit
            if limit is None or unit not in ("tokens", "output_tokens"):
                return False
            left = limit - used[index] - (reserved_input(req) if unit == "tokens" else 0)
            room = min(room, left)
        room //= answers(req.body)
        if room < MIN_SUPPLIED_CAP:
            return False
        set_output_cap(req, room)
        return True

    def _exhausted(self, ctx: RequestContext, ticket: Ticket, failed: Sequence[int]
                   ) -> BudgetExhausted:
        index = failed[0]
        item = min((a for a in ticket.applied if a.charge_index == index),
                   key=lambda a: a.hard)
        limit = item.limit
        now = self.clock.now()
        reset_at = window_end(limit.window, now)
        window = _WINDOW_WORDS[limit.window.kind]
        unit = _UNIT_WORDS[limit.unit]
        used = format_amount(limit.unit, item.used)
        hard = format_amount(limit.unit, item.hard)
        ctx.block_reason = f"budget:{limit.name}"
        # "reserved": requests still in flight hold their worst case until they settle.
        message = (f"{describe_scope(limit, item.scope_id)} has used or reserved {used} of "
                   f"its {hard} {window} {unit}; this request needs "
                   f"{format_amount(limit.unit, item.amount)} more; resets at "
                   f"{describe_reset(limit.window, now)}{self._hidden_note(ctx)}")
        retry_after = max(1, math.ceil(reset_at - now))
        headers = {"retry-after": str(retry_after), **self.headers(ticket, failed_index=index)}
        code = "rate_limit_exceeded" if limit.window.kind in ("minute", "rolling") \
            and limit.unit == "requests" else "budget_exceeded"
        if self.on_blocked is not None:
            self.on_blocked(limit, item.scope_id, item.used, item.amount)
        return BudgetExhausted(limit, item.scope_id, message, code, headers)

    def headers(self, ticket: Ticket, failed_index: int | None = None) -> dict[str, str]:
        """``x-ratelimit-*`` for the tightest request and token limits, and the remaining
        budget of the tightest scope."""
        now = self.clock.now()
        out: dict[str, str] = {}
        best: dict[str, tuple[float, Applied]] = {}
        for item in ticket.applied:
            if item.charge_index < 0 or item.limit.shadow or item.hard <= 0:
                continue
            spent = item.used + (0 if item.charge_index == failed_index else item.amount)
            remaining = max(0, item.hard - spent)
            ratio = remaining / item.hard
            unit = item.limit.unit
            group = "requests" if unit == "requests" else "usd" if unit == "usd" else "tokens"
            if group not in best or ratio < best[group][0]:
                best[group] = (ratio, item)
            if "tightest" not in best or ratio < best["tightest"][0]:
                best["tightest"] = (ratio, item)
        for group in ("requests", "tokens"):
            if group in best:
                item = best[group][1]
                spent = item.used + (0 if item.charge_index == failed_index else item.amount)
                out[f"x-ratelimit-limit-{group}"] = str(item.hard)
                out[f"x-ratelimit-remaining-{group}"] = str(max(0, item.hard - spent))
                out[f"x-ratelimit-reset-{group}"] = reset_text(
                    window_end(item.limit.window, now) - now)
        if "tokens" in best:
            item = best["tokens"][1]
            spent = item.used + (0 if item.charge_index == failed_index else item.amount)
            out["x-tokenstile-budget-remaining-tokens"] = str(max(0, item.hard - spent))
        if "usd" in best:
            item = best["usd"][1]
            spent = item.used + (0 if item.charge_index == failed_index else item.amount)
            left = nano_to_usd(max(0, item.hard - spent))
            out["x-tokenstile-budget-remaining-usd"] = f"{left:.6f}"
        if "tightest" in best:
            item = best["tightest"][1]
            limit = item.limit
            out["x-tokenstile-budget-scope"] = (
                f"{limit.scope}:{item.scope_id}:{limit.window.kind}:{limit.unit}")
        return out

    def _pending_row(self, ctx: RequestContext, ticket: Ticket) -> LedgerRow:
        """The row to write if this reservation is never settled (the gateway died)."""
        req = ctx.req
        assert req is not None
        row = ctx.ledger_row(0.0)
        row.input_tokens = reserved_input(req)
        row.output_tokens = req.output_cap or 0
        row.cost_nano = self.pricer.estimate_nano(ctx.served_model or req.model,
                                                  row.input_tokens, req.output_cap or 0,
                                                  ctx.provider, terms=self._terms(ctx)) or 0
        row.estimated = True
        row.outcome = "unsettled"
        row.status = 0
        row.flags = [*row.flags, "charged_at_estimate"]
        return row

    # -- settle -----------------------------------------------------------------------------

    def actual(self, unit: Unit, ctx: RequestContext) -> int:
        usage = ctx.usage
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
        return ctx.cost_nano

    async def release(self, ctx: RequestContext) -> None:
        """Give a reservation back whole (the request will not be forwarded)."""
        used, ctx.usage = ctx.usage, None
        try:
            await self.settle(ctx)
        finally:
            ctx.usage = used

    async def settle(self, ctx: RequestContext) -> None:
        ticket = ctx.ticket
        if not isinstance(ticket, Ticket) or ticket.settled:
            return
        ticket.settled = True
        deltas = [(charge.key, self.actual(unit, ctx) - charge.amount)
                  for charge, unit in zip(ticket.charges, ticket.units, strict=True)]
        if not ticket.metered:
            # Admitted unmetered: once the store answers, release the reservation if it
            # landed after all, else add what was used, so the budget still sees it.
            adds = [(charge.key, self.actual(unit, ctx), charge.ttl)
                    for charge, unit in zip(ticket.charges, ticket.units, strict=True)]
            self._keep_unsettled(ticket.rid, Unsettled(
                deltas, [a for a in adds if a[1] > 0]))
            return
        try:
            known = await self._store("settle",
                                      lambda: self.counters.settle(ticket.rid, deltas))
        except StoreUnavailable:
            ctx.flags.append("settle_deferred")
            self._keep_unsettled(ticket.rid, Unsettled(deltas))
            return
        self.live.discard(ticket.rid)
        if not known:
            ctx.flags.append("settled_after_expiry")
            await self._correct_claimed(ticket, deltas)

    async def _correct_claimed(self, ticket: Ticket, deltas: list[tuple[str, int]]) -> None:
        """A first settle that finds its reservation gone: crash recovery claimed it (its
        lease ran out) and its charges stayed counted at the reserved amounts, while the
        ledger keeps this request's own row over the estimate. The counters move by the
        same deltas the settle would have applied, so they end at what was used. (A settle
        retried after a lost reply may find its own reservation gone: it goes through
        ``flush_unsettled``, which changes nothing then.)"""
        adjust = [(charge.key, delta, charge.ttl)
                  for charge, (_, delta) in zip(ticket.charges, deltas, strict=True) if delta]
        if adjust:
            with contextlib.suppress(StoreUnavailable):  # left at the estimate: over, not under
                await self._store("add", lambda: self.counters.add(adjust))

    # -- the store's health ----------------------------------------------------------------

    def _failing_fast(self) -> bool:
        return self.store_down_since is not None and (
            self._probing or time.monotonic() < self._retry_at)

    async def _store(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One call on the counter store. While it is down, calls fail at once, except one
        probe every ``STORE_RETRY_S``; each real failure is counted (``on_store_error``)."""
        if self.store_down_since is not None:
            if self._failing_fast():
                raise StoreUnavailable(f"the counter store is unavailable ({self.store_error})")
            self._probing = probe = True
        else:
            probe = False
        try:
            result = await call()
        except StoreUnavailable as exc:
            self._store_failed(what, exc)
            raise
        finally:
            if probe:
                self._probing = False
        if self.store_down_since is not None:
            log.warning("the counter store answers again after %.1f s",
                        time.time() - self.store_down_since)
            self.store_down_since, self.store_error = None, None
            self._healthy_since = time.monotonic()
        return result

    def _store_failed(self, what: str, exc: StoreUnavailable) -> None:
        self.store_errors += 1
        self._retry_at = time.monotonic() + STORE_RETRY_S
        if self.store_down_since is None:
            self.store_down_since = time.time()
            log.warning("counter store unavailable (%s): limits fail closed or open as "
                        "configured until it answers", exc)
        self.store_error = f"{what}: {exc}"
        if self.on_store_error is not None:
            self.on_store_error(what)

    async def probe(self) -> None:
        """Ping the store (``/readyz``); a success ends an outage at once."""
        await self._store("ping", self.counters.ping)

    def store_status(self) -> dict[str, Any]:
        """The counter store as admission sees it, and what its limits do while it is down."""
        closed = sorted({a.name for a in self.limits if a.window.kind != "request"
                         and a.failure_mode == "closed"})
        opened = sorted({a.name for a in self.limits if a.window.kind != "request"
                         and a.failure_mode == "open"})
        status: dict[str, Any] = {
            "status": "ok" if self.store_down_since is None else "unavailable",
            "errors": self.store_errors, "unsettled": len(self.unsettled),
            "fail_closed": len(closed), "fail_open": opened,
        }
        if self.store_down_since is not None:
            status["down_for_s"] = round(time.time() - self.store_down_since, 1)
            status["error"] = self.store_error
        return status

    def _keep_unsettled(self, rid: str, item: Unsettled) -> None:
        """Apply later (``maintain``); the lease stays renewed meanwhile, so the reservation
        is not charged at its estimate while its actual usage is known here."""
        if len(self.unsettled) >= MAX_UNSETTLED:
            dropped = next(iter(self.unsettled))
            self.unsettled.pop(dropped)
            self.live.discard(dropped)
            log.error("too many settles wait for the counter store; %s is left to its "
                      "lease (charged at its estimate)", dropped)
        self.unsettled[rid] = item
        self.live.add(rid)

    async def flush_unsettled(self) -> int:
        """Apply what waited for the store, oldest first; stop at the first failure."""
        done = 0
        for rid, item in list(self.unsettled.items()):
            known = await self._store("settle", partial(self.counters.settle, rid, item.deltas))
            if not known and item.adds:
                await self._store("add", partial(self.counters.add, item.adds))
            self.unsettled.pop(rid, None)
            self.live.discard(rid)
            done += 1
        return done

    # -- leases and recovery ----------------------------------------------------------------

    async def maintain(self, on_expired: Callable[[LedgerRow], None],
                       interval: float | None = None) -> None:
        """Until cancelled: apply what waited for the store, renew live leases and claim
        reservations whose gateway died.

        After an outage, claims wait until the store has answered for 1.5 intervals, so
        every gateway has renewed its live leases first (an outage longer than a lease must
        not charge requests that are still running).
        """
        interval = interval or max(0.2, self.lease_s / 3)
        upkeep_at = 0.0
        while True:
            if self.unsettled:
                with contextlib.suppress(StoreUnavailable):
                    await self.flush_unsettled()
            elif self.store_down_since is not None:
                with contextlib.suppress(StoreUnavailable):
                    await self.probe()  # when idle, nothing else asks the store
            if time.monotonic() >= upkeep_at:
                upkeep_at = time.monotonic() + interval
                if self.live:
                    with contextlib.suppress(StoreUnavailable):
                        await self._store("renew", lambda: self.counters.renew(
                            list(self.live), self.clock.now() + self.lease_s))
                if self.store_down_since is None and \
                        time.monotonic() - self._healthy_since >= 1.5 * interval:
                    with contextlib.suppress(Exception):
                        await self.recover(on_expired)
            busy = self.unsettled or self.store_down_since is not None
            await asyncio.sleep(min(interval, STORE_RETRY_S) if busy else interval)

    async def recover(self, on_expired: Callable[[LedgerRow], None]) -> int:
        """Charge reservations whose lease ran out at their estimate; return how many.

        One of this gateway's own (still running, or waiting to settle) is not charged: its
        own row comes from the request, whose settle then corrects the counters (one left
        waiting to settle keeps the estimate).
        """
        claimed = await self._store("claim", lambda: self.counters.claim_expired(
            self.clock.now()))
        mine = {item.rid for item in claimed if item.rid in self.live}
        for rid in mine:
            self.unsettled.pop(rid, None)
            self.live.discard(rid)
        claimed = [item for item in claimed if item.rid not in mine]
        for item in claimed:
            try:
                data = orjson.loads(item.record)
                row = LedgerRow(**data)
            except (orjson.JSONDecodeError, TypeError):
                row = LedgerRow(id=item.rid, ts=self.clock.now(), outcome="unsettled",
                                estimated=True, status=0, flags=["charged_at_estimate"])
            on_expired(row)
        return len(claimed)


def new_reservation_id() -> str:
    return "res_" + secrets.token_hex(12)
