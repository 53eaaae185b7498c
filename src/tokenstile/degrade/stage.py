"""The degradation stage: answers with less instead of errors, and always says so.

Called by the request path at three points:

- ``before_admission``: input over a feature's ``max_input`` is trimmed (or summarized)
  instead of refused when the feature says ``over_budget: trim|summarize``; a scope past a
  ``downgrade`` threshold (as of its last admission) switches to the cheaper model;
- ``after_admission``: a scope past a ``throttle`` threshold waits for its paced slot;
- ``cheaper_model``: when a budget is exhausted and its ``block`` threshold lists
  ``downgrade`` as a fallback, the model to retry the admission with.

Every step is recorded in ``ctx.degraded`` (the ``x-tokenstile-degraded`` header and the
ledger) with its details in headers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tokenstile import tokens
from tokenstile.clock import Clock
from tokenstile.config import Config
from tokenstile.degrade.throttle import Pacer, ThrottleRejected
from tokenstile.degrade.trim import Message, trim_messages
from tokenstile.errors import GatewayError
from tokenstile.limits.admission import Admission
from tokenstile.limits.model import Limit, Threshold
from tokenstile.providers.anthropic import output_format
from tokenstile.providers.converse import count_converse
from tokenstile.providers.generate_content import count_gemini, thinking_for
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.types import Ticket

if TYPE_CHECKING:
    from tokenstile.types import RequestContext

log = logging.getLogger("tokenstile.degrade")

Summarizer = Callable[["RequestContext", list[Message]], Awaitable[str]]

SUMMARY_PREFIX = "Summary of the earlier conversation: "
# The APIs whose conversations are trimmed, and the field that holds the turns (Gemini's
# ``systemInstruction`` is apart from its ``contents``, so it always stays).
_TRIMMED = {"chat": "messages", "messages": "messages", "converse": "messages",
            "generate_content": "contents"}


def _count_fn(ctx: RequestContext) -> Callable[[list[Message]], int]:
    req = ctx.req
    body = req.body
    if req.api == "converse":
        return lambda messages: count_converse(req.model, {**body, "messages": messages})
    if req.api == "generate_content":  # the system instruction and tools counted too
        return lambda contents: count_gemini(req.model, {**body, "contents": contents})
    if req.api == "messages":  # Anthropic's Messages, on Bedrock's InvokeModel too
        fmt = output_format(body)
        return lambda messages: tokens.count_anthropic(req.model, messages, body.get("system"),
                                                       body.get("tools"), output_format=fmt)
    return lambda messages: tokens.count_chat(req.model, messages, body.get("tools"),
                                              body.get("functions"),
                                              response_format=body.get("response_format"))


def _throttle_thresholds(limit: Limit) -> list[Threshold]:
    return [t for t in limit.thresholds if t.action == "throttle"]


class Degrader:
    def __init__(self, config: Config, admission: Admission, clock: Clock) -> None:
        self.admission = admission
        self.clock = clock
        self._pace_failing = False
        self.pacer = Pacer(clock, admission.counters, config.degradation.throttle_max_wait_s,
                           config.degradation.throttle_queue)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.pacer.max_wait_s = config.degradation.throttle_max_wait_s
        self.pacer.max_queue = config.degradation.throttle_queue

    # -- input over budget ------------------------------------------------------------------

    async def fit_input(self, ctx: RequestContext, recount: Callable[[], int],
                        summarize: Summarizer | None) -> None:
        req = ctx.req
        feature = self.config.features.get(req.feature or "") if req.feature else None
        if feature is None or feature.max_input is None or feature.over_budget == "reject":
            return
        if req.input_tokens <= feature.max_input or req.api not in _TRIMMED:
            return
        field = _TRIMMED[req.api]
        messages = req.body.get(field)
        if not isinstance(messages, list):
            return
        count = _count_fn(ctx)
        budget = feature.max_input
        if feature.over_budget == "summarize" and summarize is not None and ctx.wire == "openai":
            messages = await self._summarize(ctx, messages, budget, count, summarize)
        trimmed = trim_messages(messages, budget, count, self.config.degradation.truncate,
                                must_start_with_user=req.api != "chat")
        if trimmed is None:
            return  # even the newest turn does not fit: admission refuses it with 422
        req.body = {**req.body, field: trimmed.messages}
        req.input_tokens = recount()
        if trimmed.dropped or trimmed.truncated:
            ctx.degraded.append("trimmed")
            ctx.response_headers["x-tokenstile-trimmed-messages"] = str(trimmed.dropped)
            ctx.trimmed_messages = trimmed.dropped
            if trimmed.truncated:
                ctx.truncated = True

    async def _summarize(self, ctx: RequestContext, messages: list[Message], budget: int,
                         count: Callable[[list[Message]], int], summarize: Summarizer
                         ) -> list[Message]:
        """Older turns become one summary written by the cheaper model; the newest turns
        that fit in half the budget stay as they were."""
        recent = trim_messages(messages, max(1, budget // 2), count, None)
        if recent is None or recent.dropped == 0:
            return messages
        lead = [m for m in messages if m.get("role") in ("system", "developer")]
        kept = recent.messages[len([m for m in recent.messages
                                    if m.get("role") in ("system", "developer")]):]
        older = [m for m in messages if m not in lead and m not in kept]
        summary = await summarize(ctx, older)
        ctx.degraded.append("summarized")
        ctx.summarized_messages = len(older)
        ctx.response_headers["x-tokenstile-summarized-messages"] = str(len(older))
        return [*lead, {"role": "system", "content": SUMMARY_PREFIX + summary}, *kept]

    # -- soft thresholds --------------------------------------------------------------------

    def cheaper(self, model: str, threshold: Threshold | None = None) -> str | None:
        choice = (threshold.downgrade_to if threshold else None) or \
            self.config.degradation.downgrade.get(model)
        return choice if choice and choice != model else None

    def downgrade(self, ctx: RequestContext) -> None:
        """Switch to the cheaper model when a scope is past a ``downgrade`` threshold."""
        req, caller = ctx.req, ctx.caller
        free: bool | None = None  # priced only if a USD threshold is past
        for item in self.admission.applicable(caller, req):
            for threshold in item.limit.thresholds:
                if threshold.action != "downgrade":
                    continue
                if self.admission.last_utilization(item) < threshold.fraction:
                    continue
                if item.limit.unit == "usd":
                    if free is None:
                        free = self.admission.priced_at_zero(ctx)
                    if free:  # a free model is not switched to a paid one to save money
                        continue
                target = self.cheaper(req.model, threshold)
                if target is not None:
                    self.switch_model(ctx, target, f"{item.limit.name}>={threshold.fraction}")
                    return

    def switch_model(self, ctx: RequestContext, model: str, why: str) -> None:
        req = ctx.req
        if ctx.requested_model is None:
            ctx.requested_model = req.model
        ctx.downgraded = why
        req.model = model
        req.body = {**req.body, "model": model}
        if req.api == "generate_content":  # a budget the cheaper model takes
            req.body = thinking_for(model, req.body)
        if "downgraded" not in ctx.degraded:
            ctx.degraded.append("downgraded")

    async def throttle(self, ctx: RequestContext) -> None:
        """Wait for a paced slot when a scope is past a ``throttle`` threshold. Every
        request on a limit with such a threshold is counted on its lane (one counter-store
        call), so the normal rate is known when throttling engages; the slots are shared by
        every process on the store. If the store cannot pace, the request goes unpaced."""
        ticket = ctx.ticket
        if not isinstance(ticket, Ticket) or not ticket.metered:
            return
        waited = 0.0
        for item in ticket.applied:
            thresholds = _throttle_thresholds(item.limit)
            if not thresholds or item.charge_index < 0 or item.hard <= 0:
                continue
            if item.limit.unit == "usd" and item.amount == 0:
                continue  # a call priced at zero spends nothing: not paced by a USD budget
            lane = f"{item.limit.name}:{item.scope_id}"
            share = (item.used + item.amount) / item.hard
            engaged = [t for t in thresholds if share >= t.fraction]
            reduction = min(t.reduction or 0.5 for t in engaged) if engaged else None
            try:
                waited += await self.pacer.pace(lane, reduction)
                self._pace_failing = False
            except StoreUnavailable as exc:
                if not self._pace_failing:  # once per outage
                    log.warning("throttled scopes go unpaced while the counter store is "
                                "unreachable: %s", exc)
                self._pace_failing = True
            except ThrottleRejected as rejected:
                await self.admission.release(ctx.ticket)
                ctx.block_reason = f"throttled:{item.limit.name}"
                assert reduction is not None
                raise GatewayError(
                    429, f"{item.limit.name} is past {engaged[0].fraction:.0%} of its budget "
                         f"and requests are paced to {reduction:.0%} of their rate; the wait "
                         f"would be {rejected.wait_s:.1f}s, longer than allowed; retry later",
                    type="rate_limit_error", code="throttled",
                    headers={"retry-after": str(max(1, math.ceil(rejected.wait_s)))}
                ) from None
        if waited:
            ctx.degraded.append("throttled")
            ms = round(waited * 1000)
            ctx.response_headers["x-tokenstile-queue-ms"] = str(ms)
            ctx.queue_ms = ms

    def fallbacks(self, limit: Limit) -> tuple[str, ...]:
        """What to try when ``limit`` is exhausted, in order (the ``block`` threshold's
        ``fallback``); an error is always last."""
        for threshold in limit.thresholds:
            if threshold.action == "block" and threshold.fallback:
                return threshold.fallback
        return ()

