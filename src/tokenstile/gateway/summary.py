"""Older turns summarized by a cheaper model, as a call of its own through this gateway:
billed to the same caller and feature, with a ledger row of its own (``summary_for``
names the request it was made for)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from tokenstile.errors import GatewayError
from tokenstile.gateway.counted import bill_counted
from tokenstile.providers.answers import answer_text
from tokenstile.types import Arrival, RequestContext, new_request_id

if TYPE_CHECKING:
    from tokenstile.clock import Clock
    from tokenstile.degrade.stage import Degrader
    from tokenstile.gateway.forward import Forwarder
    from tokenstile.gateway.settle import Settler
    from tokenstile.limits.admission import Admission
    from tokenstile.providers.base import Adapter

INSTRUCTION = ("Summarize the conversation below in a few sentences. Keep facts, names, "
               "numbers, decisions and open questions.")


class Summarizer:
    def __init__(self, summarize_model: str | None, degrader: Degrader, adapter: Adapter,
                 admission: Admission, forwarder: Forwarder, settler: Settler,
                 clock: Clock) -> None:
        self.summarize_model = summarize_model
        self.degrader = degrader
        self.adapter = adapter  # OpenAI's: the summary is asked as a chat completion
        self.admission = admission
        self.forwarder = forwarder
        self.settler = settler
        self.clock = clock

    async def __call__(self, parent: RequestContext, messages: list[dict[str, Any]]) -> str:
        model = self.summarize_model or self.degrader.cheaper(parent.req.model) or \
            parent.req.model
        transcript = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)
        body = {"model": model, "max_tokens": 400, "messages": [
            {"role": "system", "content": INSTRUCTION},
            {"role": "user", "content": transcript}]}
        req = self.adapter.parse("chat", body)
        req.feature, req.tags = parent.req.feature, dict(parent.req.tags)
        req.input_tokens = self.adapter.count_input(req)
        arrival = Arrival(id=new_request_id(), api="chat", wire="openai", ts=self.clock.now(),
                          started=self.clock.monotonic(), headers={},
                          provider_key=parent.provider_key)
        sub = RequestContext.begin(arrival, parent.caller, req)
        sub.summary_for = parent.id
        try:
            return await self._ask(sub, model)
        finally:
            await self.settler.finish(sub)

    async def _ask(self, sub: RequestContext, model: str) -> str:
        sub.ticket = await self.admission.reserve(sub, per_request=False)
        opened = await self.forwarder.open(sub, self.forwarder.route(sub))
        resp, bridge = opened.response, opened.bridge
        try:
            payload = await resp.read()
            sub.status = resp.status
        finally:
            resp.release()
        parsed = answer = orjson.loads(payload) if resp.status == 200 else None
        if bridge is not None and parsed is not None:
            sub.usage = bridge.usage_from_body(parsed)
            payload, parsed = bridge.response_body(payload, parsed)
        elif parsed is not None:
            sub.usage = self.adapter.usage_from_body("chat", parsed)
        if answer is not None and sub.usage is None:
            bill_counted(sub, answer_text(bridge.upstream_api if bridge else "chat", answer))
        try:
            return str(parsed["choices"][0]["message"]["content"])  # type: ignore[index]
        except (TypeError, KeyError, IndexError):
            sub.outcome = "upstream_error"
            raise GatewayError(502, f"the summary model {model!r} gave no summary; "
                               "the input is over its budget", type="api_error",
                               code="summary_failed") from None
