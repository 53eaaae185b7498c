"""Writing decisions into the request's record, and the error a block becomes.

Flags are ``<policy>:<what>`` (``max_tokens:clamped``, ``request_wordlists:audit:profanity``);
a decision made in shadow mode is ``<policy>:shadow:<what>`` (``max_tokens:shadow:blocked``).
A block sets ``block_reason`` to ``policy:<code>[,<code>…]``. ``ctx.policies`` (the row's
``detail["policies"]``) keeps one entry per decision with its message, for
``tokenstile flagged``.
"""

from __future__ import annotations

from typing import Any

from tokenstile.errors import GatewayError, StreamBlocked
from tokenstile.policies.decisions import Block, Decision, Flag, Rewrite
from tokenstile.policies.headers import Loosening
from tokenstile.types import RequestContext


def _note(ctx: RequestContext, flag: str, entry: dict[str, Any]) -> None:
    if flag in ctx.flags:
        return
    ctx.flags.append(flag)
    ctx.policies.append(entry)


def record(ctx: RequestContext, decision: Decision) -> None:
    """Flag a decision (the engine carries out the enforced ones)."""
    policy = decision.policy
    shadow = ":shadow" if decision.shadow else ""
    if isinstance(decision, Block):
        _note(ctx, f"{policy}{shadow}:blocked",
              {"policy": policy, "action": "block", "shadow": decision.shadow,
               "code": decision.code, "message": decision.message})
    elif isinstance(decision, Rewrite):
        _note(ctx, f"{policy}{shadow}:{decision.note}",
              {"policy": policy, "action": "rewrite", "shadow": decision.shadow,
               "note": decision.note})
    elif isinstance(decision, Flag):
        _note(ctx, f"{policy}{shadow}:{decision.note}",
              {"policy": policy, "action": "flag", "shadow": decision.shadow,
               "note": decision.note})


def record_loosening(ctx: RequestContext, item: Loosening) -> None:
    _note(ctx, f"{item.policy}:loosening_ignored",
          {"policy": item.policy, "action": "loosening_ignored", "header": item.header,
           "value": item.value})


def record_feature_loosening(ctx: RequestContext, policy: str, feature: str | None) -> None:
    _note(ctx, f"{policy}:loosening_ignored",
          {"policy": policy, "action": "loosening_ignored", "feature": feature})


def blocked(ctx: RequestContext, blocks: list[Block], streamed: bool = False) -> GatewayError:
    """One error for every block: all the reasons, in policy order; the first one's code."""
    codes = ",".join(dict.fromkeys(b.code for b in blocks))
    ctx.block_reason = f"policy:{codes}"
    message = "; ".join(b.message for b in blocks)
    first = blocks[0]
    if streamed:
        return StreamBlocked(first.status, "the answer was cut off: " + message,
                             code=first.code, param=first.param)
    return GatewayError(first.status, message, code=first.code, param=first.param,
                        type="invalid_request_error" if first.status < 500 else "api_error")
