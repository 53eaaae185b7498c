"""What admission tells a client: refusals that say which budget, how much, and when it
resets, and the ``x-ratelimit-*`` headers of the tightest budgets (``anthropic-ratelimit-*``
too on Anthropic routes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from tokenstile.errors import GatewayError
from tokenstile.hidden_input import describe_sources
from tokenstile.limits.caps import answers, reserved_input
from tokenstile.limits.counter_keys import reset_at
from tokenstile.limits.model import Limit
from tokenstile.limits.runs import RUN_HEADER, run_of
from tokenstile.limits.windows import describe_reset, window_end
from tokenstile.types import (
    Applied,
    CanonicalRequest,
    RequestContext,
    Ticket,
    Unit,
    WireFormat,
    nano_to_usd,
)

WINDOW_WORDS = {"minute": "per-minute", "hour": "hourly", "day": "daily", "week": "weekly",
                "month": "monthly", "rolling": "rolling", "request": "per-request",
                "run": "per-run"}
UNIT_WORDS = {"tokens": "tokens", "input_tokens": "input tokens",
              "output_tokens": "output tokens", "requests": "requests", "usd": "USD"}
PER_WINDOW = {"minute": "a minute", "hour": "an hour", "day": "a day", "week": "a week",
              "month": "a month", "rolling": "in its rolling window", "request": "per request",
              "run": "per run"}
SCOPE_WORDS = {"global": "the gateway", "organization": "organization", "project": "project",
               "team": "team", "user": "user", "tier": "tier", "key": "key",
               "feature": "feature", "model": "model", "end_user": "end user", "run": "run"}


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


def describe_scope(scope: str, scope_id: str) -> str:
    if scope == "global":
        return "the gateway"
    if scope == "run":  # the id the client sent, without whose run it is
        return f"run {run_of(scope_id)!r}"
    return f"{SCOPE_WORDS.get(scope, scope)} {scope_id!r}"


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


def _allows(item: Applied, per: str) -> str:
    limit = item.limit
    return (f"{describe_scope(limit.scope, item.scope_id)} allows "
            f"{format_amount(limit.unit, item.hard)} {UNIT_WORDS[limit.unit]} {per}")


def hidden_note(ctx: RequestContext) -> str:
    """Why the reserved input is larger than the request looks, and what to set."""
    req, info = ctx.req, ctx.hidden_input
    if not req.hidden_input or info is None:
        return ""
    return (f"; its input is reserved at its worst case of "
            f"{req.input_tokens + req.hidden_input_tokens:,} tokens ({info['basis']}), "
            f"because {describe_sources(req.hidden_input)} cannot be counted before the "
            f"call: set hidden_input.max_tokens for {ctx.model!r} to the most input such a "
            "request can bring")


def hidden_too_large(ctx: RequestContext, item: Applied, need: int, per: str) -> GatewayError:
    """A worst case that cannot fit under a hard limit is refused (never admitted on a
    small guess), naming the setting that bounds it."""
    what = UNIT_WORDS[item.limit.unit]
    return GatewayError(
        422, f"this request needs up to {format_amount(item.limit.unit, need)} {what} but "
             f"{_allows(item, per)}{hidden_note(ctx)}", code="hidden_input_exceeds_limit",
        param="hidden_input.max_tokens")


def no_room(item: Applied, req: CanonicalRequest, short: str) -> GatewayError:
    """A per-request limit that leaves no room for even one output token per answer
    (``short``: what runs out, ``input`` or ``output``)."""
    allows = _allows(item, "per request")
    count = answers(req.body)
    asked = f" for each of the {count} answers asked for ('n')" if count > 1 else ""
    if short == "input":
        return GatewayError(
            422, f"this request has {reserved_input(req):,} input tokens, which leaves "
                 f"no room for output{asked}: {allows}; shorten the input",
            code="request_limit_exceeded", param="messages")
    return GatewayError(
        422, f"this request asks for {count} answers but {allows}, not one token "
             "each; ask for fewer answers ('n')", code="request_limit_exceeded", param="n")


def too_large(item: Applied, need: int, input_tokens: int, cap: int) -> GatewayError:
    """A request whose worst case is past a per-request limit."""
    limit = item.limit
    allows = _allows(item, "per request")
    if limit.unit == "input_tokens":
        return GatewayError(422, f"this request has {input_tokens:,} input tokens but "
                            f"{allows}; shorten the input", code="request_limit_exceeded",
                            param="messages")
    return GatewayError(
        422, f"this request needs {format_amount(limit.unit, need)} {UNIT_WORDS[limit.unit]} "
             f"(input {input_tokens:,} + output cap {cap:,}) but {allows}; lower max_tokens "
             "or shorten the input", code="request_limit_exceeded", param="max_tokens")


def exhausted(ctx: RequestContext, ticket: Ticket, failed: Sequence[int],
              now: float) -> tuple[BudgetExhausted, Applied]:
    """The 429 for a reservation a window budget had no room for, and the tightest limit
    that refused it."""
    index = failed[0]
    item = min((a for a in ticket.applied if a.charge_index == index), key=lambda a: a.hard)
    limit = item.limit
    ctx.block_reason = f"budget:{limit.name}"
    run = limit.window.kind == "run"
    if run:  # a run's budget does not come back while the run goes on
        resets = (f"the run is over its budget: start a new run ({RUN_HEADER}) to go on; "
                  f"this id is forgotten {reset_text(limit.window.length_s or 0)} after "
                  "its last call")
    else:
        resets = f"resets at {describe_reset(limit.window, now)}"
    # "reserved": requests still in flight hold their worst case until they settle.
    what = f" ({limit.name})" if run else ""
    message = (f"{describe_scope(limit.scope, item.scope_id)} has used or reserved "
               f"{format_amount(limit.unit, item.used)} of its "
               f"{format_amount(limit.unit, item.hard)} {WINDOW_WORDS[limit.window.kind]} "
               f"{UNIT_WORDS[limit.unit]}{what}; this request needs "
               f"{format_amount(limit.unit, item.amount)} more; {resets}{hidden_note(ctx)}")
    retry_after = max(1, math.ceil(window_end(limit.window, now) - now))
    headers = {"retry-after": str(retry_after),
               **ratelimit_headers(ticket, now, failed_index=index, wire=ctx.wire)}
    if run:  # retrying cannot help: the SDKs read this and do not retry
        headers["x-should-retry"] = "false"
    code = "run_budget_exceeded" if run else "rate_limit_exceeded" \
        if limit.window.kind in ("minute", "rolling") and limit.unit == "requests" \
        else "budget_exceeded"
    return BudgetExhausted(limit, item.scope_id, message, code, headers), item


def ratelimit_headers(ticket: Ticket, now: float, failed_index: int | None = None,
                      wire: WireFormat = "openai") -> dict[str, str]:
    """``x-ratelimit-*`` for the tightest request and token limits, and the remaining
    budget of the tightest scope; on Anthropic routes also Anthropic's
    ``anthropic-ratelimit-*`` (requests, tokens, input and output tokens; resets as
    RFC 3339 times)."""
    best: dict[str, tuple[float, Applied]] = {}

    def left(item: Applied) -> int:
        spent = item.used + (0 if item.charge_index == failed_index else item.amount)
        return max(0, item.hard - spent)

    def consider(group: str, ratio: float, item: Applied) -> None:
        if group not in best or ratio < best[group][0]:
            best[group] = (ratio, item)

    for item in ticket.applied:
        if item.charge_index < 0 or item.limit.shadow or item.hard <= 0:
            continue
        ratio = left(item) / item.hard
        unit = item.limit.unit
        consider("requests" if unit == "requests" else "usd" if unit == "usd" else "tokens",
                 ratio, item)
        if unit in ("input_tokens", "output_tokens"):
            consider(unit, ratio, item)
        consider("tightest", ratio, item)
    out: dict[str, str] = {}
    for group in ("requests", "tokens"):
        if group in best:
            item = best[group][1]
            out[f"x-ratelimit-limit-{group}"] = str(item.hard)
            out[f"x-ratelimit-remaining-{group}"] = str(left(item))
            out[f"x-ratelimit-reset-{group}"] = reset_text(reset_at(item.limit.window, now)
                                                           - now)
    if wire == "anthropic":
        for group in ("requests", "tokens", "input_tokens", "output_tokens"):
            if group in best:
                item = best[group][1]
                name = "anthropic-ratelimit-" + group.replace("_", "-")
                out[f"{name}-limit"] = str(item.hard)
                out[f"{name}-remaining"] = str(left(item))
                out[f"{name}-reset"] = rfc3339(window_end(item.limit.window, now))
    if "tokens" in best:
        out["x-tokenstile-budget-remaining-tokens"] = str(left(best["tokens"][1]))
    if "usd" in best:
        out["x-tokenstile-budget-remaining-usd"] = f"{nano_to_usd(left(best['usd'][1])):.6f}"
    if "tightest" in best:
        item = best["tightest"][1]
        limit = item.limit
        scope_id = run_of(item.scope_id) if limit.scope == "run" else item.scope_id
        out["x-tokenstile-budget-scope"] = (
            f"{limit.scope}:{scope_id}:{limit.window.kind}:{limit.unit}")
    return out


def rfc3339(when: float) -> str:
    """Anthropic's reset format: ``2026-01-01T00:00:00Z`` (UTC, whole seconds, rounded up
    so the budget has reset by then)."""
    return datetime.fromtimestamp(math.ceil(when), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
