"""Usage the gateway counts itself, for answers whose provider reported none, or not all.

- A whole answer without a ``usage`` block (vLLM, Ollama, LM Studio…): its text, visible
  and reasoning (``providers.answers``), counted with the model's tokenizer.
- A stream that ended before its usage (the client left, the upstream cut it, a policy
  stopped it): what was relayed, visible and reasoning.
- Reasoning the provider does not stream (OpenAI's o-series and gpt-5 think before their
  first visible token and show nothing of it on chat completions, nor do Gemini 2.5 and 3
  unless asked for thought summaries): when such a stream ends
  before its usage, the reasoning done until its first visible token (or until it ended,
  if none came) is estimated as those seconds × the model's pace (``hidden_reasoning``),
  at most what the output cap leaves, and never less than the reasoning text that was
  streamed. The row is flagged ``reasoning_estimated``.

Input is billed as admission counted it, hidden input at the worst case it reserved. Every
such row is ``estimated``.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from tokenstile.providers.answers import AnswerText
from tokenstile.providers.base import ObserverWrapper
from tokenstile.providers.generate_content import thinking_off
from tokenstile.types import Usage

if TYPE_CHECKING:
    from tokenstile.clock import Clock
    from tokenstile.config import HiddenReasoningConfig
    from tokenstile.providers.base import StreamObserver
    from tokenstile.types import RequestContext

# Models that reason before they answer without streaming their reasoning, and a pace at
# the low end of what they are measured to write (so the estimate stays a floor).
BUILT_IN_PACES: dict[str, float] = {
    "o1*": 50.0, "o3*": 50.0, "o4*": 50.0, "gpt-5*": 50.0, "codex-mini*": 50.0,
    "gemini-2.5*": 50.0, "gemini-3*": 50.0,
}


def bill_counted(ctx: RequestContext, text: AnswerText, *, at_cap: bool = False) -> None:
    """No usage from the provider: bill the gateway's own count of what was sent and
    received (``at_cap``: an answer lost on the way is billed at its output cap)."""
    req = ctx.req
    ctx.estimated = True
    output, reasoning = text.count(req.model)
    if at_cap and req.output_cap:
        output = max(output, req.output_cap)
        ctx.flags.append("billed_at_cap")
    # Input the gateway could not count is billed at the worst case it reserved.
    ctx.usage = Usage(input_tokens=req.input_tokens + req.hidden_input_tokens,
                      output_tokens=output, reasoning_tokens=reasoning)


class ReasoningTimer(ObserverWrapper):
    """A ``StreamObserver`` around another that notes when visible output first came."""

    __slots__ = ("_clock", "first_visible")

    def __init__(self, inner: StreamObserver, clock: Clock) -> None:
        super().__init__(inner)
        self._clock = clock
        self.first_visible: float | None = None

    def on_event(self, event: bytes) -> bytes | None:
        try:
            return self._inner.on_event(event)
        finally:
            if self.first_visible is None and self._inner.answering():
                self.first_visible = self._clock.monotonic()



class ReasoningPace:
    """Tokens per second a model reasons at without streaming it (0: it does not)."""

    def __init__(self, config: HiddenReasoningConfig) -> None:
        self.default = config.default_tokens_per_s
        merged = {**BUILT_IN_PACES, **{k.strip().lower(): v
                                       for k, v in config.tokens_per_s.items()}}
        self._exact = {k: v for k, v in merged.items() if not any(c in k for c in "*?[")}
        self._patterns = sorted(((k, v) for k, v in merged.items() if k not in self._exact),
                                key=lambda item: -len(item[0]))

    def of(self, model: str, body: dict[str, Any]) -> float:
        if thinking_off(body):  # a Gemini request that turns thinking off
            return 0.0
        name = model.strip().lower()
        bare = name.rsplit("/", 1)[-1]
        for candidate in (name, bare):
            if candidate in self._exact:
                return self._exact[candidate]
        for pattern, pace in self._patterns:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(bare, pattern):
                return pace
        return self.default if asks_to_reason(body) else 0.0


def asks_to_reason(body: dict[str, Any]) -> bool:
    """``reasoning_effort`` (chat), ``reasoning`` (Responses) or Anthropic's ``thinking``."""
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort.lower() != "none":
        return True
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") != "none" and \
            reasoning.get("enabled") is not False:
        return True
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def settle_stream(ctx: RequestContext, observer: ReasoningTimer, config: HiddenReasoningConfig,
                  now: float, default_cap: int) -> None:
    """The usage of a relayed stream: the provider's, else the gateway's count of it, with
    the reasoning it did not show when it ended before its final usage."""
    usage = observer.usage
    if usage is None:
        bill_counted(ctx, AnswerText([observer.output_text()], [observer.reasoning_text()]))
    else:
        ctx.usage = usage
    if observer.usage_is_final() or ctx.usage is None:
        return
    ctx.estimated = True  # part of it is the gateway's own count
    if ctx.sent_at is None:
        return
    req = ctx.req
    pace = ReasoningPace(config).of(ctx.served_model or req.model, req.body)
    seconds = (observer.first_visible or now) - ctx.sent_at
    add_hidden_reasoning(ctx, ctx.usage, pace * seconds, req.output_cap or default_cap)


def add_hidden_reasoning(ctx: RequestContext, usage: Usage, estimate: float, cap: int) -> None:
    """Raise the reasoning billed to ``estimate`` tokens, within what ``cap`` leaves after
    the visible output."""
    room = max(0, cap - (usage.output_tokens - usage.reasoning_tokens))
    floor = min(int(estimate), room)
    if floor <= usage.reasoning_tokens:
        return
    usage.output_tokens += floor - usage.reasoning_tokens
    usage.reasoning_tokens = floor
    ctx.estimated = True
    ctx.flags.append("reasoning_estimated")
