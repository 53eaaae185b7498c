"""Pricing one finished call: at its provider's prices, at the service tier that served it,
with the fees of the tool calls it made."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenstile.providers.terms import terms_of

if TYPE_CHECKING:
    from tokenstile.prices import ModelPrice, Pricer
    from tokenstile.types import RequestContext

# Tiers a response names that are billed at the standard prices.
_STANDARD_TIERS = frozenset({"default", "standard", "auto"})


def fallback_price(ctx: RequestContext) -> ModelPrice | None:
    """The fallback price of a USD limit the call was admitted under with ``unpriced:
    fallback`` (an unpriced call under any other USD limit was refused), so that the ledger
    and the budget both count it at that price."""
    applied = getattr(ctx.ticket, "applied", None) or ()
    for item in applied:
        limit = item.limit
        if limit.unit == "usd" and limit.fallback_price is not None:
            return limit.fallback_price  # type: ignore[no-any-return]
    return None


def price_call(pricer: Pricer, ctx: RequestContext) -> None:
    """Set ``ctx.cost_nano`` from its usage, flagging what could not be priced.

    The tier is the one the answer names; an answer that names none is priced at the tier
    the request asked for, as reserved (``auto`` and no tier: the standard prices).
    """
    usage, model = ctx.usage, ctx.served_model
    if "charged_at_estimate" in ctx.flags:
        return  # priced as its reservation was (gateway.attempts)
    media = ctx.req.media if ctx.req is not None else None
    if media is not None and usage is not None and model:
        # Images, audio, moderations: by image, second, character or token (tokenstile.media)
        cost = media.cost_nano(pricer, model, ctx.provider, usage)
        if cost is None:
            ctx.flags.append("unpriced_model")
        ctx.cost_nano = cost or 0
        return
    if usage is None or not model or not (usage.total_tokens or usage.billable_calls):
        return
    # At the version in force when the call was made (configured versions only: without
    # them the price is today's, as genai-prices has it).
    price = pricer.price_for(model, ctx.provider, at=ctx.ts if pricer.edges else None)
    if price is None:
        ctx.flags.append("unpriced_model")
        price = fallback_price(ctx)
        if price is None:
            ctx.cost_nano = 0
            return
        ctx.flags.append("priced_at_fallback")
    asked = terms_of(ctx.req).service_tier if ctx.req is not None else None
    tier = usage.service_tier or (None if asked == "auto" else asked)
    if tier and tier not in _STANDARD_TIERS and price.for_tier(tier) is price:
        ctx.flags.append(f"tier_priced_as_standard:{tier}")
    ctx.flags.extend(f"unpriced_{what}" for what in price.unpriced(usage))
    ctx.cost_nano = price.cost_nano(usage, tier)
