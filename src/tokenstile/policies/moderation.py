"""Auto-moderation: the input goes to the upstream's ``/v1/moderations`` before the call.

The only policy that needs I/O, so it is split in two: ``UpstreamModerator`` asks the
upstream (and reports a failure instead of raising), ``judge`` decides from the answer.
When the moderation call fails, ``failure_mode`` says what happens: ``open`` lets the
request through (flagged), ``closed`` refuses it with 503.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from tokenstile.config import UpstreamConfig
from tokenstile.errors import GatewayError
from tokenstile.gateway.routing import Router
from tokenstile.gateway.upstream import UpstreamClient, upstream_headers, upstream_url
from tokenstile.gateway.upstream_response import BODY_ERRORS
from tokenstile.policies.decisions import Block, Decision, Flag, where
from tokenstile.policies.rules import ModerationRule

POLICY = "auto_moderate"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the moderation endpoint said: the categories it flagged, or why it could not."""

    flagged: bool = False
    categories: tuple[str, ...] = ()
    error: str | None = None


class Moderator(Protocol):
    async def moderate(self, text: str, rule: ModerationRule, model: str,
                       provider_key: str | None) -> Verdict: ...


def verdict_from(payload: Any) -> Verdict:
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list) or not results:
        return Verdict(error="the moderation answer had no results")
    flagged = False
    categories: set[str] = set()
    for result in results:
        if not isinstance(result, dict):
            continue
        flagged = flagged or result.get("flagged") is True
        named = result.get("categories")
        if isinstance(named, dict):
            categories.update(name for name, on in named.items() if on is True)
    return Verdict(flagged, tuple(sorted(categories)))


class UpstreamModerator:
    """Asks the upstream that would serve the request (or ``rule.upstream``), provided it
    speaks OpenAI's API; else the first configured one that does."""

    def __init__(self, router: Router, client: UpstreamClient) -> None:
        self._router = router
        self._client = client

    def _upstream(self, rule: ModerationRule, model: str) -> tuple[str, UpstreamConfig] | None:
        upstreams = self._router.upstreams
        if rule.upstream is not None:
            found = upstreams.get(rule.upstream)
            return (rule.upstream, found) if found is not None else None
        try:
            target = self._router.resolve(model)
            if target.config.kind in ("openai", "azure"):
                return target.upstream, target.config
        except GatewayError:
            pass
        return next(((name, u) for name, u in upstreams.items()
                     if u.kind in ("openai", "azure")), None)

    async def moderate(self, text: str, rule: ModerationRule, model: str,
                       provider_key: str | None) -> Verdict:
        chosen = self._upstream(rule, model)
        if chosen is None:
            return Verdict(error="no OpenAI-compatible upstream to moderate with")
        name, config = chosen
        body = orjson.dumps({"model": rule.model, "input": text})
        headers = upstream_headers(config, {}, provider_key)
        try:
            async with asyncio.timeout(rule.timeout_s):
                resp = await self._client.post(name, config, upstream_url(config, "moderations"),
                                               body, headers)
                try:
                    if resp.status != 200:
                        return Verdict(error=f"the upstream answered {resp.status}")
                    payload = orjson.loads(await resp.read())
                finally:
                    resp.release()
        except TimeoutError:
            return Verdict(error=f"no answer within {rule.timeout_s:g}s")
        except (GatewayError, orjson.JSONDecodeError) as exc:
            return Verdict(error=type(exc).__name__)
        except BODY_ERRORS as exc:
            return Verdict(error=type(exc).__name__)
        return verdict_from(payload)


def judge(rule: ModerationRule, verdict: Verdict) -> Decision | None:
    """Block flagged input (only the configured categories, when they are listed)."""
    if verdict.error is not None:
        if rule.failure_mode == "open":
            return Flag(POLICY, "unavailable")
        return Block(POLICY, "moderation_unavailable",
                     f"the input could not be moderated ({verdict.error}) and moderation "
                     f"is required {where(rule.source)}; try again shortly",
                     shadow=rule.shadow, status=503)
    if not verdict.flagged:
        return None
    hits = verdict.categories if rule.categories is None else \
        tuple(c for c in verdict.categories if c in rule.categories)
    if not hits and rule.categories is not None:
        return Flag(POLICY, "flagged_other:" + ",".join(verdict.categories))
    named = ", ".join(hits) if hits else "unspecified"
    return Block(POLICY, "content_flagged",
                 f"the input was flagged by moderation ({named}) and is refused "
                 f"{where(rule.source)}", shadow=rule.shadow)
