"""Runs request and response policies in their fixed order (see ``tokenstile.policies``).

With no policy configured and no policy header on the request, every hook returns at
once. Otherwise the rules for the caller's scope come from a cache, policy headers tighten
them, and the pure policies run one after the other; every block they find is reported in
one error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from tokenstile.config import Config
from tokenstile.limits.caps import set_output_cap
from tokenstile.policies import auto_reply, report
from tokenstile.policies.arguments import scan_tool_value
from tokenstile.policies.decisions import Block, Decision, Flag, Rewrite
from tokenstile.policies.headers import HEADER_NAMES, Loosening, apply_headers
from tokenstile.policies.moderation import Moderator, judge
from tokenstile.policies.reflection import reflection_decisions, reflection_finders
from tokenstile.policies.request import (
    check_input_tokens,
    check_max_tokens,
    check_models,
    check_prompt_chars,
    check_request_words,
    check_user_ids,
    match_auto_reply,
    word_decisions,
)
from tokenstile.policies.resolve import Resolver
from tokenstile.policies.rules import NO_RULES, SHADOWABLE, Rules, WordCompiler, with_shadow
from tokenstile.policies.scanner import Finder, Span, WordFinder, scan_whole
from tokenstile.policies.stream import PolicyStreamObserver
from tokenstile.policies.texts import response_slots, tool_slots
from tokenstile.providers.counts import wants_usage_chunk

if TYPE_CHECKING:
    from tokenstile.limits.overrides import Overrides
    from tokenstile.providers.base import StreamObserver
    from tokenstile.stores.database import Override
    from tokenstile.types import CanonicalRequest, RequestContext

_MODERATED_APIS = frozenset({"chat", "completions", "responses", "messages",
                             "generate_content"})


def request_decisions(rules: Rules, req: CanonicalRequest,
                      headers: dict[str, str]) -> list[Decision]:
    """The pure request policies, in order: models, user ids, prompt characters, input
    tokens, max tokens, word lists."""
    found: list[Decision | None] = []
    if rules.models is not None:
        found.append(check_models(rules.models, req.model))
    if rules.enforce_user_ids is not None:
        found.append(check_user_ids(rules.enforce_user_ids, req, headers))
    if rules.max_prompt_chars is not None:
        found.append(check_prompt_chars(rules.max_prompt_chars, req))
    if rules.max_input_tokens is not None:
        found.append(check_input_tokens(rules.max_input_tokens, req))
    if rules.max_tokens is not None:
        found.append(check_max_tokens(rules.max_tokens, req))
    if rules.request_wordlists is not None:
        found.extend(check_request_words(rules.request_wordlists, req.api, req.body))
    return [d for d in found if d is not None]


class PolicyEngine:
    """Evaluates the configured policies against one request and its response."""

    def __init__(self, config: Config, moderator: Moderator | None = None,
                 overrides: Overrides | None = None) -> None:
        self.moderator = moderator
        self._overrides = overrides
        self._seen: object = None
        self._forced: dict[str, bool] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._compiler = WordCompiler(config.policies.wordlists)
        self._resolver = Resolver(config.policies, self._compiler)
        self._configured = self._resolver.configured

    def _idle(self, ctx: RequestContext) -> bool:
        return not self._configured and HEADER_NAMES.isdisjoint(ctx.headers)

    def rules_for(self, ctx: RequestContext) -> tuple[Rules, list[Loosening], tuple[str, ...]]:
        """The rules for this request: its scope's, tightened by its policy headers; and
        the loosenings that were ignored (by header, by client-named feature)."""
        rules, by_feature = (self._resolver.rules(ctx.caller, ctx.req.feature)
                             if self._configured else (NO_RULES, ()))
        by_header: list[Loosening] = []
        if not HEADER_NAMES.isdisjoint(ctx.headers):
            rules, by_header = apply_headers(rules, ctx.headers, self._compiler)
        if self._overrides is not None and self._overrides.items is not self._seen:
            self._seen = self._overrides.items
            self._forced = shadow_overrides(self._overrides.items)
        if self._forced:
            rules = with_shadow(rules, self._forced, self._compiler)
        return rules, by_header, by_feature

    # -- before the call --------------------------------------------------------------------

    async def before(self, ctx: RequestContext) -> None:
        """Request policies: may raise a block (GatewayError), rewrite ``ctx.req.body``, add
        ``ctx.flags``, or answer by setting ``ctx.auto_reply``."""
        if self._idle(ctx):
            return
        rules, by_header, by_feature = self.rules_for(ctx)
        for item in by_header:
            report.record_loosening(ctx, item)
        req = ctx.req
        for policy in by_feature:
            report.record_feature_loosening(ctx, policy, req.feature)
        if rules is NO_RULES:
            return
        self._attribute_end_user(rules, ctx)
        decisions = request_decisions(rules, req, ctx.headers)
        if any(isinstance(d, Block) and not d.shadow for d in decisions):
            # Refused already; moderation still has its say, so the one error names every
            # reason (and no auto-reply answers a refused request).
            self._carry_out(ctx, decisions + await self._moderate(ctx, rules))
        self._carry_out(ctx, decisions)
        if rules.auto_replies:
            rule = match_auto_reply(rules.auto_replies, req.api, req.body)
            if rule is not None:
                self._answer(ctx, rule.reply)
                return
        self._carry_out(ctx, await self._moderate(ctx, rules))
        if rules.retries is not None:
            ctx.retries = rules.retries

    async def _moderate(self, ctx: RequestContext, rules: Rules) -> list[Decision]:
        """What moderation decides about the input (nothing when it is off)."""
        moderation, req = rules.auto_moderate, ctx.req
        if moderation is None or self.moderator is None or not req.input_text or \
                req.api not in _MODERATED_APIS:
            return []
        verdict = await self.moderator.moderate(req.input_text, moderation, req.model,
                                                ctx.provider_key)
        ctx.moderation = {"flagged": verdict.flagged, "categories": list(verdict.categories),
                          **({"error": verdict.error} if verdict.error else {})}
        decision = judge(moderation, verdict)
        return [decision] if decision is not None else []

    def _carry_out(self, ctx: RequestContext, decisions: list[Decision]) -> None:
        """Record every decision; refuse with all enforced blocks, else apply rewrites."""
        blocks: list[Block] = []
        for decision in decisions:
            report.record(ctx, decision)
            if isinstance(decision, Block) and not decision.shadow:
                blocks.append(decision)
        if blocks:
            raise report.blocked(ctx, blocks)
        req = ctx.req
        for decision in decisions:
            if isinstance(decision, Rewrite) and not decision.shadow:
                if decision.patch:
                    req.body = {**req.body, **decision.patch}
                if decision.output_cap is not None:
                    set_output_cap(req, decision.output_cap)  # and the worst case it allows

    @staticmethod
    def _attribute_end_user(rules: Rules, ctx: RequestContext) -> None:
        """The configured user-id header names the end user when the body does not."""
        rule, req = rules.enforce_user_ids, ctx.req
        if rule is not None and rule.header and req is not None and not req.end_user:
            value = ctx.headers.get(rule.header, "").strip()
            if value:
                req.end_user = value[:256]

    def _answer(self, ctx: RequestContext, text: str) -> None:
        req = ctx.req
        ctx.auto_reply = auto_reply.render(
            req.api, req.model, text, stream=req.stream, created=int(ctx.ts),
            ident=ctx.id.removeprefix("req_"), include_usage=wants_usage_chunk(req.body))
        ctx.response_headers["x-tokenstile-auto-reply"] = "true"
        report.record(ctx, Flag("auto_replies", "answered"))

    # -- after the call ---------------------------------------------------------------------

    def _response_finders(self, ctx: RequestContext) -> list[Finder]:
        rules = self.rules_for(ctx)[0]
        if not rules.response_side:
            return []
        req = ctx.req
        finders: list[Finder] = []
        words = rules.response_wordlists
        if words is not None and words.matcher:
            finders.append(WordFinder(words.matcher))
        reflection = rules.prompt_reflection
        if reflection is not None:
            system = req.system_text or (req.input_text if req.api == "completions" else "")
            live = None if reflection.shadow else reflection.action
            would = reflection.action if reflection.shadow else None
            finders.extend(reflection_finders(system, live, would, reflection.delimiter,
                                              reflection.min_run_chars))
        return finders

    def after_body(self, ctx: RequestContext, payload: bytes, parsed: Any) -> bytes:
        """Response policies on a whole (non-streamed) answer; returns the bytes to send."""
        if self._idle(ctx) or ctx.status >= 400 or ctx.req is None:
            return payload
        finders = self._response_finders(ctx)
        if not finders:
            return payload
        slots = response_slots(ctx.req.api, parsed)
        found: list[Span] = []
        changed = False
        for _, owner, key in slots:
            text, spans = scan_whole(owner[key], finders)
            found.extend(spans)
            if text != owner[key]:
                owner[key], changed = text, True
        for owner, key in tool_slots(ctx.req.api, parsed):
            value, spans = scan_tool_value(owner[key], finders)
            found.extend(spans)
            if value is not owner[key]:
                owner[key], changed = value, True
        self._judge_answer(ctx, found, streamed=False)
        return orjson.dumps(parsed) if changed else payload

    def wrap_stream(self, ctx: RequestContext, observer: StreamObserver) -> StreamObserver:
        """Response policies on a stream: wrap the observer; its ``on_event`` may rewrite
        events or raise StreamBlocked to cut the stream."""
        if self._idle(ctx) or ctx.req is None:
            return observer
        finders = self._response_finders(ctx)
        if not finders:
            return observer
        return PolicyStreamObserver(observer, ctx.req.api, finders,
                                    lambda spans: self._judge_answer(ctx, spans, streamed=True),
                                    ctx.wire)

    def _judge_answer(self, ctx: RequestContext, spans: list[Span], streamed: bool) -> None:
        if not spans:
            return
        rules = self.rules_for(ctx)[0]
        decisions: list[Decision] = []
        for policy in ("response_wordlists", "prompt_reflection"):
            mine = [s for s in spans if s.hit.policy == policy]
            if not mine:
                continue
            rule = getattr(rules, policy)
            source = rule.source if rule is not None else "gateway"
            decisions.extend(word_decisions(policy, mine, source, "answer")
                             if policy == "response_wordlists"
                             else reflection_decisions(mine, source))
            if any(s.hit.action == "redact" for s in mine):
                decisions.append(Rewrite(policy, "redacted"))
        blocks = [d for d in decisions if isinstance(d, Block) and not d.shadow]
        for decision in decisions:
            report.record(ctx, decision)
        if blocks:
            raise report.blocked(ctx, blocks, streamed=streamed)


def shadow_overrides(items: list[Override]) -> dict[str, bool]:
    """Policies a runtime override puts into shadow mode or out of it (target: the policy
    name, optionally as ``policy:<name>``)."""
    forced: dict[str, bool] = {}
    for item in items:
        name = item.target.removeprefix("policy:")
        shadow = item.value.get("shadow")
        if item.kind == "shadow" and name in SHADOWABLE and isinstance(shadow, bool):
            forced[name] = shadow
    return forced
