"""Attempts at the upstream that may have cost money without giving an answer.

A request that timed out after it was sent may still have been generated, and billed, by
the provider (a non-streamed answer is generated whole before its headers go out). Each such
attempt is charged at its estimate (input + output cap, priced as reservations are) and
flagged ``charged_at_estimate``: the last one on the request's own row, every earlier one on
a row of its own (``<request id>-<attempt>``, its ``detail.attempt_of`` naming the request).

Another attempt after one of them (a retry, a fallback) goes only with
``resilience.retry_timeouts``, and only when every hard limit has room for its worst case
too: per-request limits for all of the attempts together, window limits by a reservation
of its own, made before it goes. That reservation then carries the earlier attempt's row
(written by crash recovery if the gateway dies meanwhile) and is settled once it is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenstile.errors import GatewayError
from tokenstile.gateway.upstream import UpstreamTimeout
from tokenstile.limits.caps import reserved_input
from tokenstile.limits.explain import NoRoomForRetry
from tokenstile.providers.terms import reservation_terms
from tokenstile.types import LedgerRow, RequestContext, Usage, set_usage

if TYPE_CHECKING:
    from tokenstile.gateway.resilience import Attempt
    from tokenstile.gateway.routing import Target
    from tokenstile.limits.admission import Admission
    from tokenstile.prices import Pricer


def may_have_cost(ctx: RequestContext, err: GatewayError) -> bool:
    """A paid call that timed out once it may have reached the upstream."""
    return isinstance(err, UpstreamTimeout) and err.sent and ctx.api != "count_tokens"


@dataclass(slots=True)
class _Unanswered:
    attempt: Attempt
    target: Target
    number: int


class PaidAttempts:
    """The attempts of one request that may have been billed without an answer."""

    def __init__(self, ctx: RequestContext, admission: Admission, pricer: Pricer,
                 write: Callable[[LedgerRow], Awaitable[None]], *, retry_timeouts: bool,
                 default_output_tokens: int) -> None:
        self.ctx = ctx
        self.admission = admission
        self.pricer = pricer
        self._write = write  # a row of its own, written before its reservation is settled
        self.retry_timeouts = retry_timeouts
        self.default_output_tokens = default_output_tokens
        self._last: _Unanswered | None = None
        self.rows = 0  # earlier attempts charged on rows of their own

    def failed(self, attempt: Attempt, target: Target, err: GatewayError, number: int) -> None:
        if may_have_cost(self.ctx, err):
            self._last = _Unanswered(attempt, target, number)

    async def allow_another(self) -> bool:
        """Before another attempt: the last one that may have been billed gets its own row,
        under a reservation of its own. False: no other attempt may go."""
        last, ctx = self._last, self.ctx
        if last is None:
            return True
        if not self.retry_timeouts:
            ctx.retry_refused = "resilience.retry_timeouts is off"
            return False
        row, usage = self._row(last)
        try:
            ticket = await self.admission.reserve_retry(ctx, row, self.rows + 1)
        except NoRoomForRetry as full:
            ctx.retry_refused = str(full)
            return False
        await self._write(row)
        await self.admission.settle(ticket, usage, row.cost_nano)
        self.rows += 1
        self._last = None
        return True

    def charge_request(self) -> None:
        """No attempt answered: the request's own row is its last attempt's, when that one
        may have been billed."""
        last, ctx = self._last, self.ctx
        if last is None:
            return
        ctx.usage, ctx.cost_nano = self._estimate(last.target)
        ctx.upstream, ctx.served_model = last.target.upstream, last.target.model
        ctx.provider, ctx.estimated = last.target.provider, True
        ctx.flags.append("charged_at_estimate")

    def _estimate(self, target: Target) -> tuple[Usage, int]:
        req = self.ctx.req
        usage = Usage(input_tokens=reserved_input(req),
                      output_tokens=req.output_cap or self.default_output_tokens) \
            if req.media is None else req.media.worst_usage(reserved_input(req),
                                                           req.output_cap or 0)
        cost = self.pricer.estimate_nano(
            target.model, usage.input_tokens, usage.output_tokens, target.provider,
            terms=reservation_terms(req, target.config.auto_service_tier))
        if cost is None:
            self.ctx.flags.append("unpriced_model")
        return usage, cost or 0

    def _row(self, last: _Unanswered) -> tuple[LedgerRow, Usage]:
        ctx = self.ctx
        usage, cost = self._estimate(last.target)
        row = ctx.ledger_row(last.attempt.ms)
        row.id = f"{ctx.id}-{last.number}"
        row.upstream, row.served_model = last.target.upstream, last.target.model
        set_usage(row, usage)
        row.cost_nano, row.estimated, row.ttfb_ms = cost, True, None
        row.status, row.outcome, row.block_reason = 504, "error", "upstream_timeout"
        row.flags = [*row.flags, "charged_at_estimate"]
        row.detail = {**row.detail, "attempt_of": ctx.id, "attempt": last.number}
        return row, usage
